//! What the servers' TCP and TLS connections share around
//! [`natkit_proto::framing::Deframer`]: reading with two deadlines, and a
//! writer task with a bounded queue and bounded writes.
//!
//! A connection is closed when it makes no progress: no bytes for the idle
//! timeout while no frame has started, or a frame not finished within the
//! idle timeout of its first byte (so one byte now and then cannot hold a
//! connection open), or a write that does not complete within the idle
//! timeout (a client that sends and never reads).

use std::time::Duration;

use natkit_proto::framing::Deframer;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamEnd {
    /// The client closed its side (after what it sent was answered).
    Eof,
    /// Nothing arrived for the idle timeout.
    Idle,
    /// A frame was not complete within the idle timeout of its first byte.
    FrameTimeout,
    /// The stream is not STUN or ChannelData, or a frame is too large.
    Framing,
    /// Answers could not be written within the idle timeout: the client
    /// does not read them.
    WriteTimeout,
    /// Reading or writing failed (reset, TLS error).
    Error,
    /// The server is stopping.
    Shutdown,
}

impl StreamEnd {
    /// Every label, for metrics created up front.
    pub const LABELS: [&'static str; 7] = [
        "eof",
        "idle",
        "frame_timeout",
        "framing",
        "write_timeout",
        "error",
        "shutdown",
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// Read once more into `d`, waiting at most until the connection's
/// deadline: `idle` from now when no frame has started, else `idle` from
/// the first byte of the unfinished frame ([`Deframer::partial_since`]).
/// Cancel-safe: dropped before it completes, it has consumed nothing.
pub async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    d: &mut Deframer,
    idle: Duration,
) -> Result<(), StreamEnd> {
    let (deadline, late) = match d.partial_since() {
        Some(first) => (Instant::from_std(first) + idle, StreamEnd::FrameTimeout),
        None => (Instant::now() + idle, StreamEnd::Idle),
    };
    let read = tokio::select! {
        r = r.read(d.read_buf()) => r,
        _ = tokio::time::sleep_until(deadline) => return Err(late),
    };
    match read {
        Ok(0) => Err(StreamEnd::Eof),
        Ok(n) => {
            // tokio's clock: the deadline above is on it (tests pause it).
            d.filled(n, Instant::now().into_std());
            Ok(())
        }
        Err(_) => Err(StreamEnd::Error),
    }
}

/// Most bytes gathered from the queue into one write.
const COALESCE: usize = 64 * 1024;

/// The writing half of a connection: sends what arrives on `rx`, in
/// order, several queued messages per write, each write (and its flush,
/// which TLS needs) bounded by `timeout`. When every sender is gone and
/// the queue is sent, it closes the stream's write side (a client that
/// half-closed gets every answer, then EOF). On a failed or late write it
/// stops and drops `rx`, so senders see the queue closed.
pub async fn write_queued<W: AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Vec<u8>>,
    timeout: Duration,
) -> Result<(), StreamEnd> {
    let mut buf = Vec::new();
    while let Some(first) = rx.recv().await {
        buf.clear();
        buf.extend_from_slice(&first);
        while buf.len() < COALESCE {
            match rx.try_recv() {
                Ok(more) => buf.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let write = async {
            w.write_all(&buf).await?;
            w.flush().await
        };
        match tokio::time::timeout(timeout, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(StreamEnd::Error),
            Err(_) => return Err(StreamEnd::WriteTimeout),
        }
    }
    let _ = tokio::time::timeout(timeout, w.shutdown()).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    const BINDING: [u8; 20] = [
        0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ];

    #[tokio::test(start_paused = true)]
    async fn a_trickled_frame_times_out_from_its_first_byte() {
        let (mut client, mut server) = duplex(1024);
        let mut d = Deframer::new(2048, false);
        let idle = Duration::from_secs(3);
        let start = Instant::now();
        let trickle = tokio::spawn(async move {
            for b in BINDING {
                client.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(1800)).await;
            }
        });
        let end = loop {
            match read_more(&mut server, &mut d, idle).await {
                Ok(()) => assert!(d.next_frame().unwrap().is_none()),
                Err(e) => break e,
            }
        };
        assert_eq!(end, StreamEnd::FrameTimeout);
        assert_eq!(start.elapsed(), idle);
        trickle.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn whole_frames_keep_a_connection_open_and_silence_ends_it() {
        let (mut client, mut server) = duplex(1024);
        let mut d = Deframer::new(2048, false);
        let idle = Duration::from_secs(3);
        let start = Instant::now();
        tokio::spawn(async move {
            for _ in 0..4 {
                client.write_all(&BINDING).await.unwrap();
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            tokio::time::sleep(Duration::from_secs(60)).await;
        });
        let mut frames = 0;
        let end = loop {
            match read_more(&mut server, &mut d, idle).await {
                Ok(()) => {
                    while d.next_frame().unwrap().is_some() {
                        frames += 1;
                    }
                }
                Err(e) => break e,
            }
        };
        assert_eq!((end, frames), (StreamEnd::Idle, 4));
        // The last frame came at 6 s; idle 3 s after it.
        assert_eq!(start.elapsed(), Duration::from_secs(9));
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_sends_everything_then_closes_or_gives_up_on_a_non_reader() {
        let (client, server) = duplex(64);
        let (tx, rx) = mpsc::channel(4);
        let writer = tokio::spawn(write_queued(server, rx, Duration::from_secs(3)));
        for i in 0..3u8 {
            tx.send(vec![i; 10]).await.unwrap();
        }
        drop(tx);
        let mut got = Vec::new();
        let mut client = client;
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), 30);
        assert_eq!(writer.await.unwrap(), Ok(()));

        // Nobody reads: the write stalls and is given up after the timeout,
        // and the queue closes for its senders.
        let (_client, server) = duplex(64);
        let (tx, rx) = mpsc::channel(4);
        let writer = tokio::spawn(write_queued(server, rx, Duration::from_secs(3)));
        tx.send(vec![0; 1000]).await.unwrap();
        assert_eq!(writer.await.unwrap(), Err(StreamEnd::WriteTimeout));
        assert!(tx.send(vec![1]).await.is_err());
    }
}
