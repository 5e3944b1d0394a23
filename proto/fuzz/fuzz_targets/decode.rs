//! Feed arbitrary bytes to every natkit-proto parser: raw header and
//! attribute walking, integrity and fingerprint checks, the stun-rs based
//! decoder, Binding request/response parsing, ChannelData, stream framing
//! and first-byte demultiplexing. Any panic is a bug: the servers parse
//! untrusted datagrams with exactly these functions.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natkit_proto::{binding, channel_data, demux, framing, integrity, message, nonce, raw, rest};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = raw::parse_header(data) {
        for a in raw::Attributes::new(data, &h) {
            let Ok(a) = a else { break };
            let _ = raw::decode_address(a.value);
            let _ = raw::decode_xor_address(a.value, &h.transaction_id);
        }
        let _ = integrity::verify(data, &h, b"fuzz key");
        let _ = integrity::check_fingerprint(data, &h);
    }
    let _ = raw::parse_datagram(data);
    let _ = message::decode(data);
    let _ = message::decode_with_key(data, b"fuzz key");
    let _ = binding::parse_request(data);
    let _ = binding::parse_response(data);
    let _ = channel_data::decode(data);
    for allow in [false, true] {
        let _ = framing::next_frame(data, allow, 4096);
        let _ = demux::classify(data, allow);
    }
    // Text inputs: nonces and REST usernames come from clients too.
    if let Ok(text) = std::str::from_utf8(data) {
        let key = nonce::NonceKey::from_bytes([7; 32]);
        let client = "192.0.2.1:3478".parse().expect("literal address");
        let _ = key.verify(
            text,
            client,
            std::time::SystemTime::now(),
            std::time::Duration::from_secs(600),
        );
        let _ = nonce::security_features(text);
        let _ = rest::RestSecrets::new(["fuzz"]).password_for(text, std::time::SystemTime::now());
    }
});
