//! The walker against `stun-rs` on fuzzed bytes: both must agree on whether
//! a datagram is valid STUN and, when both accept it, on every attribute
//! both understand (the oracle and its allowed differences are in
//! `proto/tests/oracle/mod.rs`, shared with the property tests).
//!
//! The first input byte steers the rest toward messages that get past
//! framing and the integrity checks, so the fuzzer spends its time on
//! attribute values: bit 0 writes the magic cookie, bit 1 the length field,
//! bit 2 appends MESSAGE-INTEGRITY(-SHA256, by bit 3) under the oracle's
//! key, bit 4 appends FINGERPRINT. Both decoders get the same final bytes;
//! the MACs and CRC are computed with natkit's code, and `stun-rs` checks
//! them with its own.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natkit_proto::integrity;
use natkit_proto::raw::{attr, HEADER_LEN, MAGIC_COOKIE};

#[path = "../../tests/oracle/mod.rs"]
mod oracle;

fn set_length(m: &mut [u8]) {
    let len = (m.len() - HEADER_LEN) as u16;
    m[2..4].copy_from_slice(&len.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut m = rest.to_vec();
    if m.len() >= HEADER_LEN {
        if mode & 0x01 != 0 {
            m[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        }
        if mode & 0x02 != 0 {
            m.truncate(m.len() & !3);
            set_length(&mut m);
        }
        let key = oracle::PASSWORD.as_bytes();
        if mode & 0x04 != 0 {
            if mode & 0x08 != 0 {
                oracle::append_computed(&mut m, attr::MESSAGE_INTEGRITY_SHA256, 32, |p| {
                    integrity::hmac_sha256(key, p).to_vec()
                });
            } else {
                oracle::append_computed(&mut m, attr::MESSAGE_INTEGRITY, 20, |p| {
                    integrity::hmac_sha1(key, p).to_vec()
                });
            }
        }
        if mode & 0x10 != 0 {
            oracle::append_computed(&mut m, attr::FINGERPRINT, 4, |p| {
                integrity::fingerprint(p).to_be_bytes().to_vec()
            });
        }
    }
    if let Err(e) = oracle::check(&m, &oracle::key()) {
        panic!("walker and stun-rs disagree: {e}\ninput after shaping: {m:02x?}");
    }
});
