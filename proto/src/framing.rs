//! Framing STUN and ChannelData messages on stream transports (TCP, TLS).
//!
//! RFC 8489 §6.2.2: STUN over TCP carries no extra framing; the header's
//! length field delimits each message. RFC 8656 §12.5: ChannelData messages
//! on a stream are padded to a multiple of 4 bytes. The first two bits tell
//! the two apart (00 for STUN, 01 for ChannelData).

use crate::channel_data;
use crate::raw::{HEADER_LEN, MAGIC_COOKIE};

/// The kind of frame at the head of a stream buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// A STUN message.
    Stun,
    /// A ChannelData message (only on TURN client connections).
    ChannelData,
}

/// A complete frame found at the start of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// What it is.
    pub kind: FrameKind,
    /// Bytes of the message itself (for ChannelData: header plus data,
    /// without padding).
    pub message_len: usize,
    /// Bytes to consume from the stream (the message plus any padding).
    pub consumed: usize,
}

/// The stream does not carry STUN or ChannelData: close the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("stream data is neither STUN nor ChannelData (first byte {0:#04x})")]
    NotStun(u8),
    #[error("STUN message without the magic cookie on a stream")]
    BadCookie,
    #[error("ChannelData on a connection that does not accept it")]
    ChannelDataNotAllowed,
    #[error("frame of {0} bytes exceeds the {1}-byte limit")]
    TooLarge(usize, usize),
}

/// Look at the start of `buf` and say whether a whole frame is there.
/// `Ok(None)` means "read more". `max_len` bounds one frame, so a peer cannot
/// make the reader buffer without limit.
pub fn next_frame(
    buf: &[u8],
    allow_channel_data: bool,
    max_len: usize,
) -> Result<Option<Frame>, FramingError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    match first >> 6 {
        0b00 => {
            // Check the cookie as soon as it is there: garbage on a stream is
            // detected before we wait for bytes that may never come.
            if buf.len() < 8 {
                return Ok(None);
            }
            if u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) != MAGIC_COOKIE {
                return Err(FramingError::BadCookie);
            }
            if buf.len() < HEADER_LEN {
                return Ok(None);
            }
            let len = HEADER_LEN + u16::from_be_bytes([buf[2], buf[3]]) as usize;
            if len > max_len {
                return Err(FramingError::TooLarge(len, max_len));
            }
            Ok((buf.len() >= len).then_some(Frame {
                kind: FrameKind::Stun,
                message_len: len,
                consumed: len,
            }))
        }
        0b01 if allow_channel_data => {
            if buf.len() < channel_data::HEADER_LEN {
                return Ok(None);
            }
            let data_len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
            let message_len = channel_data::HEADER_LEN + data_len;
            let consumed = channel_data::framed_len(data_len, true);
            if consumed > max_len {
                return Err(FramingError::TooLarge(consumed, max_len));
            }
            Ok((buf.len() >= consumed).then_some(Frame {
                kind: FrameKind::ChannelData,
                message_len,
                consumed,
            }))
        }
        0b01 => Err(FramingError::ChannelDataNotAllowed),
        _ => Err(FramingError::NotStun(first)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{write_request, RequestOptions};

    #[test]
    fn stun_frames_split_across_reads() {
        let mut buf = [0u8; 64];
        let n = write_request(
            &mut buf,
            &[1; 12],
            &RequestOptions {
                fingerprint: true,
                ..Default::default()
            },
        )
        .unwrap();
        for cut in 0..n {
            assert_eq!(next_frame(&buf[..cut], false, 1024), Ok(None));
        }
        let f = next_frame(&buf[..n + 3], false, 1024).unwrap().unwrap();
        assert_eq!((f.kind, f.message_len, f.consumed), (FrameKind::Stun, n, n));
        assert_eq!(
            next_frame(&buf[..n], false, 20),
            Err(FramingError::TooLarge(n, 20))
        );
    }

    #[test]
    fn channel_data_is_padded_on_streams() {
        let mut buf = [0u8; 16];
        let n = channel_data::encode(&mut buf, 0x4000, b"abcde", true).unwrap();
        assert_eq!(next_frame(&buf[..n - 1], true, 1024), Ok(None));
        let f = next_frame(&buf[..n], true, 1024).unwrap().unwrap();
        assert_eq!(
            (f.kind, f.message_len, f.consumed),
            (FrameKind::ChannelData, 9, 12)
        );
        assert_eq!(
            next_frame(&buf[..n], false, 1024),
            Err(FramingError::ChannelDataNotAllowed)
        );
    }

    #[test]
    fn garbage_is_rejected() {
        // 'G' (0x47) has the ChannelData bits: an HTTP request on a STUN
        // port is refused as ChannelData; a TLS ClientHello (0x16) is not.
        assert_eq!(
            next_frame(b"GET / HTTP/1.1\r\n", false, 1024),
            Err(FramingError::ChannelDataNotAllowed)
        );
        assert_eq!(
            next_frame(&[0x16, 3, 1, 0, 0xA5, 1, 0, 0], false, 1024),
            Err(FramingError::BadCookie)
        );
        assert_eq!(
            next_frame(&[0xFF; 24], true, 1024),
            Err(FramingError::NotStun(0xFF))
        );
        let mut bad = [0u8; 20];
        bad[1] = 1;
        assert_eq!(next_frame(&bad, false, 1024), Err(FramingError::BadCookie));
    }
}
