//! Demultiplexing by first byte (RFC 7983 §7, updated by RFC 9443 §3 for
//! QUIC): one UDP socket carries STUN, TURN ChannelData, DTLS and QUIC.
//!
//! ```text
//!                 +----------------+
//!   [0..3]    --> |      STUN      |
//!   [16..19]  --> |      ZRTP      |
//!   [20..63]  --> |      DTLS      |
//!   [64..79]  --> | TURN Channel   |   (when TURN channels are in use)
//!   [64..127] --> |      QUIC      |   short header (RFC 9443; 64..79 only without TURN channels)
//!   [128..191]--> |    RTP/RTCP    |
//!   [192..255]--> |      QUIC      |   long header (RFC 9443)
//!                 +----------------+
//! ```

/// What a datagram is, judged by its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketKind {
    /// STUN message (first byte 0-3).
    Stun,
    /// ZRTP (16-19).
    Zrtp,
    /// DTLS record (20-63).
    Dtls,
    /// TURN ChannelData (64-79, on flows that use TURN channels).
    ChannelData,
    /// QUIC: short headers 64-127 (80-127 on flows that use TURN channels),
    /// long headers 192-255.
    Quic,
    /// RTP or RTCP (128-191).
    Rtp,
    /// Anything else, including an empty datagram.
    Unknown,
}

/// Classify a datagram. `turn_channels` says whether this flow carries TURN
/// ChannelData (a TURN client socket, or a relay's client-facing socket):
/// RFC 9443 §3 gives 64-79 to ChannelData there and to QUIC elsewhere.
pub fn classify(datagram: &[u8], turn_channels: bool) -> PacketKind {
    let Some(&b) = datagram.first() else {
        return PacketKind::Unknown;
    };
    match b {
        0..=3 => PacketKind::Stun,
        16..=19 => PacketKind::Zrtp,
        20..=63 => PacketKind::Dtls,
        64..=79 if turn_channels => PacketKind::ChannelData,
        64..=127 => PacketKind::Quic,
        128..=191 => PacketKind::Rtp,
        192..=255 => PacketKind::Quic,
        _ => PacketKind::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc7983_and_rfc9443() {
        assert_eq!(classify(&[], true), PacketKind::Unknown);
        assert_eq!(classify(&[0x00, 1], true), PacketKind::Stun);
        assert_eq!(classify(&[0x01], false), PacketKind::Stun);
        assert_eq!(classify(&[17], false), PacketKind::Zrtp);
        assert_eq!(classify(&[22], false), PacketKind::Dtls);
        assert_eq!(classify(&[0x40], true), PacketKind::ChannelData);
        assert_eq!(classify(&[0x4F], true), PacketKind::ChannelData);
        assert_eq!(classify(&[0x40], false), PacketKind::Quic);
        assert_eq!(classify(&[0x50], true), PacketKind::Quic);
        // Short and long QUIC headers both have the fixed bit (0x40) set; an
        // endpoint that multiplexes must not grease it (RFC 9443 §4).
        assert_eq!(classify(&[0x7F], false), PacketKind::Quic);
        assert_eq!(classify(&[0x80], false), PacketKind::Rtp);
        assert_eq!(classify(&[0xC3], false), PacketKind::Quic);
        assert_eq!(classify(&[5], false), PacketKind::Unknown);
    }
}
