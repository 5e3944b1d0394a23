//! Ctrl-C reaches the peer at once, also through a relay that caps
//! bandwidth.
//!
//! A QUIC CONNECTION_CLOSE is sent once (RFC 9000 §10.2.1: afterwards only
//! in answer to the peer's packets); through a relay whose token bucket
//! the transfer keeps empty, that one packet is dropped like the data
//! around it, and the peer only learns of the end when consent expires
//! (about 24 s with the defaults). So the cancel goes first as a small
//! unidirectional stream with the highest priority: stream data is
//! retransmitted until acknowledged (RFC 9000 §13.3) and a higher-priority
//! stream is sent ahead of the data queued on the transfer's stream. Once
//! the peer acknowledged it (or after [`TELL_WAIT`]), the connection is
//! closed with [`CLOSE_CANCELLED`].

use std::time::Duration;

use quinn::{Connection, VarInt};

/// QUIC application error code: this side was cancelled by its user.
pub const CLOSE_CANCELLED: u32 = 2;
/// The cancel stream's first bytes.
const MAGIC: &[u8; 4] = b"NKX1";
/// The longest reason read from the peer.
const MAX_REASON: usize = 256;
/// How long a cancelling side waits for the peer to acknowledge the
/// cancel before closing anyway.
pub const TELL_WAIT: Duration = Duration::from_secs(2);

/// Tell the peer that this side cancels, `reason` in words, and close the
/// connection.
pub async fn tell(conn: &Connection, reason: &str) {
    let told = async {
        let mut s = conn.open_uni().await.ok()?;
        s.set_priority(i32::MAX).ok()?;
        let mut msg = MAGIC.to_vec();
        msg.extend_from_slice(super::truncate_utf8(reason, MAX_REASON).as_bytes());
        s.write_all(&msg).await.ok()?;
        s.finish().ok()?;
        // Resolves once the peer acknowledged every byte.
        s.stopped().await.ok()
    };
    let _ = tokio::time::timeout(TELL_WAIT, told).await;
    conn.close(VarInt::from_u32(CLOSE_CANCELLED), reason.as_bytes());
}

/// Wait for the peer's cancel; never returns if none comes (the
/// connection ending otherwise is reported by whoever uses it).
pub async fn heard(conn: &Connection) -> anyhow::Error {
    loop {
        let Ok(mut s) = conn.accept_uni().await else {
            return std::future::pending().await;
        };
        let Ok(msg) = s.read_to_end(MAGIC.len() + MAX_REASON).await else {
            continue;
        };
        if let Some(reason) = msg.strip_prefix(MAGIC) {
            let reason = String::from_utf8_lossy(reason);
            return super::failure::kinded(
                "peer_cancelled",
                format!("the peer cancelled: {reason}"),
            );
        }
    }
}
