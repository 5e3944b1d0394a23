//! Framing STUN and ChannelData messages on stream transports (TCP, TLS).
//!
//! RFC 8489 §6.2.2: STUN over TCP carries no extra framing; the header's
//! length field delimits each message. RFC 8656 §12.5: ChannelData messages
//! on a stream are padded to a multiple of 4 bytes. The first two bits tell
//! the two apart (00 for STUN, 01 for ChannelData).
//!
//! [`next_frame`] looks at a buffer; [`Deframer`] owns the buffer and is
//! what every stream reader uses (the servers' TCP and TLS connections, the
//! TURN client's), so reading, compaction and the bound on one frame live
//! in one place.

use std::time::Instant;

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

/// First size of a [`Deframer`]'s buffer.
const INITIAL_BUFFER: usize = 2048;
/// Least room a read is offered.
const MIN_READ: usize = 1024;

/// A frame cut from the stream by [`Deframer::next_frame`], borrowed from
/// its buffer (mutable, so a reader can unwrap ChannelData in place).
#[derive(Debug, PartialEq, Eq)]
pub struct DeframedFrame<'a> {
    /// What it is.
    pub kind: FrameKind,
    /// The message (for ChannelData: header plus data, padding removed).
    pub message: &'a mut [u8],
}

/// The one stream deframer: a buffer the reader reads into, cut into whole
/// STUN and ChannelData frames.
///
/// ```
/// # use std::time::Instant;
/// use natkit_proto::framing::{Deframer, FrameKind};
///
/// let mut d = Deframer::new(2048, false);
/// let msg = [0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
/// // A reader reads into `read_buf()` and reports how much came.
/// let (head, tail) = msg.split_at(7);
/// d.read_buf()[..head.len()].copy_from_slice(head);
/// d.filled(head.len(), Instant::now());
/// assert!(d.next_frame().unwrap().is_none()); // read more
/// assert!(d.partial_since().is_some()); // a frame has started
/// d.read_buf()[..tail.len()].copy_from_slice(tail);
/// d.filled(tail.len(), Instant::now());
/// let f = d.next_frame().unwrap().unwrap();
/// assert_eq!((f.kind, f.message.len()), (FrameKind::Stun, 20));
/// assert!(d.next_frame().unwrap().is_none());
/// assert!(d.partial_since().is_none());
/// ```
///
/// Time comes in with [`Deframer::filled`], so a reader can give a frame a
/// deadline from its first byte ([`Deframer::partial_since`]): a peer that
/// trickles one byte at a time cannot keep a connection open by staying
/// under an idle timeout.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    allow_channel_data: bool,
    max_frame: usize,
    /// When the first byte of the unfinished frame at `start` arrived.
    partial_since: Option<Instant>,
    /// When the last bytes arrived.
    last_fill: Option<Instant>,
    failed: Option<FramingError>,
}

impl Deframer {
    /// A deframer for frames of at most `max_frame` bytes (padding
    /// included). ChannelData is accepted only with `allow_channel_data`
    /// (TURN connections); STUN-only servers refuse it.
    pub fn new(max_frame: usize, allow_channel_data: bool) -> Self {
        let max_frame = max_frame.max(HEADER_LEN);
        Deframer {
            // Small at first: most connections carry small messages, and a
            // server holds thousands of them. It grows (up to room for one
            // whole frame plus as much again) when a larger frame comes.
            buf: vec![0; INITIAL_BUFFER.min(max_frame * 2)],
            start: 0,
            end: 0,
            allow_channel_data,
            max_frame,
            partial_since: None,
            last_fill: None,
            failed: None,
        }
    }

    /// Where the next read goes: never empty, at least `MIN_READ` bytes (or
    /// the frame bound, if smaller). Compacts first, then grows the buffer
    /// while it is under twice the frame bound; a frame never exceeds the
    /// bound, so that always leaves room.
    pub fn read_buf(&mut self) -> &mut [u8] {
        let want = MIN_READ.min(self.max_frame);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.buf.len() - self.end < want {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let cap = self.max_frame * 2;
        if self.buf.len() - self.end < want && self.buf.len() < cap {
            let len = (self.buf.len() * 2).max(self.end + want).min(cap);
            self.buf.resize(len, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Bytes the buffer holds now (it grows with the frames it meets).
    pub fn capacity(&self) -> usize {
        self.buf.len()
    }

    /// `n` bytes were read into [`Deframer::read_buf`] at `now`.
    pub fn filled(&mut self, n: usize, now: Instant) {
        debug_assert!(self.end + n <= self.buf.len());
        if n == 0 {
            return;
        }
        if self.start == self.end {
            self.partial_since = Some(now);
        }
        self.end = (self.end + n).min(self.buf.len());
        self.last_fill = Some(now);
    }

    /// The next whole frame, `Ok(None)` to read more, or why the stream is
    /// not STUN/ChannelData (close the connection; the error repeats).
    pub fn next_frame(&mut self) -> Result<Option<DeframedFrame<'_>>, FramingError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let f = match next_frame(
            &self.buf[self.start..self.end],
            self.allow_channel_data,
            self.max_frame,
        ) {
            Ok(Some(f)) => f,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.failed = Some(e);
                return Err(e);
            }
        };
        let at = self.start;
        self.start += f.consumed;
        // Bytes left over arrived with the last read: the next frame's
        // clock starts then.
        self.partial_since = if self.start == self.end {
            None
        } else {
            self.last_fill
        };
        Ok(Some(DeframedFrame {
            kind: f.kind,
            message: &mut self.buf[at..at + f.message_len],
        }))
    }

    /// When the first byte of an unfinished frame arrived; `None` when the
    /// buffer holds nothing.
    pub fn partial_since(&self) -> Option<Instant> {
        self.partial_since
    }

    /// Bytes buffered that are not a whole frame yet.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Those bytes: what followed the last frame taken. A stream that stops
    /// carrying frames (an RFC 6062 client data connection after its
    /// ConnectionBind) passes them on as they are.
    pub fn remaining(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binding::{write_request, RequestOptions};
    use std::time::Duration;

    /// Feed `stream` to a deframer in reads of `chunk` bytes; collect the
    /// frames (kind, bytes).
    fn deframe(stream: &[u8], chunk: usize, max: usize) -> Vec<(FrameKind, Vec<u8>)> {
        let mut d = Deframer::new(max, true);
        let mut out = Vec::new();
        let t0 = Instant::now();
        let mut at = 0;
        let mut reads = 0;
        while at < stream.len() {
            // A read takes what is there, up to the space offered.
            let room = d.read_buf();
            let n = chunk.min(room.len()).min(stream.len() - at);
            assert!(n > 0, "no read space");
            room[..n].copy_from_slice(&stream[at..at + n]);
            at += n;
            reads += 1;
            d.filled(n, t0 + Duration::from_millis(reads));
            while let Some(f) = d.next_frame().unwrap() {
                out.push((f.kind, f.message.to_vec()));
            }
        }
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.partial_since(), None);
        out
    }

    #[test]
    fn deframer_cuts_frames_across_any_read_size() {
        let mut stream = Vec::new();
        let mut want = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..20u8 {
            let n = write_request(&mut buf, &[i; 12], &RequestOptions::default()).unwrap();
            stream.extend_from_slice(&buf[..n]);
            want.push((FrameKind::Stun, buf[..n].to_vec()));
            let data = vec![i; i as usize];
            let n = channel_data::encode(&mut buf, 0x4000 + i as u16, &data, true).unwrap();
            stream.extend_from_slice(&buf[..n]);
            want.push((
                FrameKind::ChannelData,
                buf[..channel_data::HEADER_LEN + data.len()].to_vec(),
            ));
        }
        for chunk in [1, 2, 3, 7, 19, 20, 64, 1000] {
            assert_eq!(deframe(&stream, chunk, 64), want, "reads of {chunk} bytes");
        }
    }

    #[test]
    fn deframer_times_the_unfinished_frame_from_its_first_byte() {
        let mut buf = [0u8; 64];
        let n = write_request(&mut buf, &[7; 12], &RequestOptions::default()).unwrap();
        let t0 = Instant::now();
        let mut d = Deframer::new(2048, false);
        // One whole frame and the first 3 bytes of the next in one read.
        let mut first = buf[..n].to_vec();
        first.extend_from_slice(&buf[..3]);
        d.read_buf()[..first.len()].copy_from_slice(&first);
        d.filled(first.len(), t0);
        assert!(d.next_frame().unwrap().is_some());
        assert!(d.next_frame().unwrap().is_none());
        assert_eq!(d.partial_since(), Some(t0));
        // More bytes later do not restart the clock.
        d.read_buf()[..2].copy_from_slice(&buf[3..5]);
        d.filled(2, t0 + Duration::from_secs(2));
        assert!(d.next_frame().unwrap().is_none());
        assert_eq!(d.partial_since(), Some(t0));
        d.read_buf()[..n - 5].copy_from_slice(&buf[5..n]);
        d.filled(n - 5, t0 + Duration::from_secs(3));
        assert!(d.next_frame().unwrap().is_some());
        assert_eq!(d.partial_since(), None);
    }

    #[test]
    fn deframer_starts_small_and_grows_only_for_large_frames() {
        let mut d = Deframer::new(65536 + 8, true);
        assert_eq!(d.capacity(), INITIAL_BUFFER);
        // Small messages, many of them: the buffer stays small.
        let mut buf = [0u8; 64];
        for i in 0..200u8 {
            let n = write_request(&mut buf, &[i; 12], &RequestOptions::default()).unwrap();
            d.read_buf()[..n].copy_from_slice(&buf[..n]);
            d.filled(n, Instant::now());
            assert!(d.next_frame().unwrap().is_some());
        }
        assert_eq!(d.capacity(), INITIAL_BUFFER);
        // One ChannelData of 60 000 bytes, read in whatever pieces fit.
        let data = vec![7u8; 60_000];
        let mut frame = vec![0u8; 60_008];
        let n = channel_data::encode(&mut frame, 0x4001, &data, true).unwrap();
        let mut at = 0;
        let mut got = None;
        while at < n {
            let room = d.read_buf();
            let k = room.len().min(n - at);
            room[..k].copy_from_slice(&frame[at..at + k]);
            at += k;
            d.filled(k, Instant::now());
            if let Some(f) = d.next_frame().unwrap() {
                got = Some(f.message.len());
            }
        }
        assert_eq!(got, Some(4 + 60_000));
        assert!(d.capacity() <= 2 * (65536 + 8));
    }

    #[test]
    fn deframer_errors_stick() {
        let mut d = Deframer::new(2048, false);
        let garbage = [0x16, 3, 1, 0, 0xA5, 1, 0, 0];
        d.read_buf()[..8].copy_from_slice(&garbage);
        d.filled(8, Instant::now());
        assert_eq!(d.next_frame().unwrap_err(), FramingError::BadCookie);
        assert_eq!(d.next_frame().unwrap_err(), FramingError::BadCookie);
        // ChannelData on a STUN-only stream, and a frame over the bound.
        let mut d = Deframer::new(2048, false);
        d.read_buf()[..4].copy_from_slice(&[0x40, 0, 0, 4]);
        d.filled(4, Instant::now());
        assert_eq!(
            d.next_frame().unwrap_err(),
            FramingError::ChannelDataNotAllowed
        );
        let mut d = Deframer::new(64, true);
        d.read_buf()[..4].copy_from_slice(&[0x40, 0, 0, 200]);
        d.filled(4, Instant::now());
        assert_eq!(d.next_frame().unwrap_err(), FramingError::TooLarge(204, 64));
    }

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
