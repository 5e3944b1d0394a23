//! TURN ChannelData messages (RFC 8656 §12).
//!
//! ```text
//!  0                   1                   2                   3
//!  |         Channel Number        |            Length             |
//!  /                       Application Data                        /
//! ```
//!
//! Over UDP the datagram may or may not be padded; over TCP and TLS the
//! message is padded to a multiple of 4 bytes and the padding is not counted
//! in Length (RFC 8656 §12.5).

/// Channel numbers a client may bind (RFC 8656 §12).
pub const CHANNEL_MIN: u16 = 0x4000;
/// Highest valid channel number (RFC 8656 §12).
pub const CHANNEL_MAX: u16 = 0x4FFF;
/// Highest channel number of RFC 5766 §11, which RFC 8656 narrowed to
/// 0x4FFF for RFC 7983 multiplexing. RFC 5766 clients still pick numbers up
/// to here (coturn's turnutils_uclient does, at random), so the relay and the
/// framing accept them; natkit's own client binds only the RFC 8656 range.
pub const RFC5766_CHANNEL_MAX: u16 = 0x7FFF;
/// Size of the ChannelData header.
pub const HEADER_LEN: usize = 4;

/// Whether `n` is a channel number of RFC 8656 (what natkit binds).
pub fn is_valid_channel(n: u16) -> bool {
    (CHANNEL_MIN..=CHANNEL_MAX).contains(&n)
}

/// Whether `n` is a channel number of RFC 5766 or RFC 8656: what ChannelData
/// framing and the relay accept.
pub fn is_channel_number(n: u16) -> bool {
    (CHANNEL_MIN..=RFC5766_CHANNEL_MAX).contains(&n)
}

/// Why bytes are not a ChannelData message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChannelDataError {
    #[error("shorter than the ChannelData header")]
    Truncated,
    #[error("channel number {0:#06x} outside 0x4000-0x7FFF")]
    BadChannel(u16),
    #[error("length field {declared} exceeds the {available} bytes present")]
    LengthMismatch { declared: usize, available: usize },
    #[error("output buffer too small")]
    BufferTooSmall,
}

/// A parsed ChannelData message borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    /// The channel number.
    pub channel: u16,
    /// The application data.
    pub data: &'a [u8],
}

/// Parse a ChannelData message at the start of `buf`. Trailing bytes (UDP
/// padding) are allowed; [`framed_len`] tells stream users how much to take.
pub fn decode(buf: &[u8]) -> Result<ChannelData<'_>, ChannelDataError> {
    if buf.len() < HEADER_LEN {
        return Err(ChannelDataError::Truncated);
    }
    let channel = u16::from_be_bytes([buf[0], buf[1]]);
    if !is_channel_number(channel) {
        return Err(ChannelDataError::BadChannel(channel));
    }
    let len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
    if HEADER_LEN + len > buf.len() {
        return Err(ChannelDataError::LengthMismatch {
            declared: len,
            available: buf.len() - HEADER_LEN,
        });
    }
    Ok(ChannelData {
        channel,
        data: &buf[HEADER_LEN..HEADER_LEN + len],
    })
}

/// Bytes a ChannelData message with `data_len` bytes of data takes on the
/// wire: padded to 4 on stream transports (RFC 8656 §12.5), unpadded on UDP.
pub fn framed_len(data_len: usize, stream: bool) -> usize {
    let n = HEADER_LEN + data_len;
    if stream {
        (n + 3) & !3
    } else {
        n
    }
}

/// Write only the 4-byte header in front of data the caller has placed at
/// `out[4..4 + data_len]` (the relay's zero-copy path), padding for streams.
/// Returns the message length.
pub fn write_header(
    out: &mut [u8],
    channel: u16,
    data_len: usize,
    stream: bool,
) -> Result<usize, ChannelDataError> {
    if !is_channel_number(channel) {
        return Err(ChannelDataError::BadChannel(channel));
    }
    let total = framed_len(data_len, stream);
    if data_len > u16::MAX as usize || total > out.len() {
        return Err(ChannelDataError::BufferTooSmall);
    }
    out[0..2].copy_from_slice(&channel.to_be_bytes());
    out[2..4].copy_from_slice(&(data_len as u16).to_be_bytes());
    out[HEADER_LEN + data_len..total].fill(0);
    Ok(total)
}

/// Write a whole ChannelData message; returns its length.
pub fn encode(
    out: &mut [u8],
    channel: u16,
    data: &[u8],
    stream: bool,
) -> Result<usize, ChannelDataError> {
    if HEADER_LEN + data.len() > out.len() {
        return Err(ChannelDataError::BufferTooSmall);
    }
    out[HEADER_LEN..HEADER_LEN + data.len()].copy_from_slice(data);
    write_header(out, channel, data.len(), stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_padding() {
        let mut buf = [0xAAu8; 16];
        let n = encode(&mut buf, 0x4001, b"hello", true).unwrap();
        assert_eq!(n, 12);
        assert_eq!(&buf[9..12], &[0, 0, 0]);
        let cd = decode(&buf[..n]).unwrap();
        assert_eq!((cd.channel, cd.data), (0x4001, &b"hello"[..]));
        let n = encode(&mut buf, 0x4FFF, b"hello", false).unwrap();
        assert_eq!(n, 9);
        assert_eq!(decode(&buf[..n]).unwrap().data, b"hello");
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(decode(&[0x40]), Err(ChannelDataError::Truncated));
        assert_eq!(
            decode(&[0x80, 0, 0, 0]),
            Err(ChannelDataError::BadChannel(0x8000))
        );
        // RFC 5766's wider range still frames.
        assert_eq!(decode(&[0x7F, 0xFF, 0, 0]).unwrap().channel, 0x7FFF);
        assert_eq!(
            decode(&[0x40, 0, 0, 5, 1]),
            Err(ChannelDataError::LengthMismatch {
                declared: 5,
                available: 1
            })
        );
        let mut small = [0u8; 6];
        assert_eq!(
            encode(&mut small, 0x4000, b"abc", false),
            Err(ChannelDataError::BufferTooSmall)
        );
        assert_eq!(
            encode(&mut [0u8; 8], 0x3FFF, b"", false),
            Err(ChannelDataError::BadChannel(0x3FFF))
        );
    }
}
