//! Feed arbitrary bytes to every natkit-proto parser: raw header and
//! attribute walking, typed attribute values, integrity and fingerprint
//! checks, Binding request/response parsing, TURN request parsing,
//! ChannelData, stream framing
//! and first-byte demultiplexing. Any panic is a bug: the servers parse
//! untrusted datagrams with exactly these functions.

#![no_main]

use libfuzzer_sys::fuzz_target;
use natkit_proto::turn::request;
use natkit_proto::{binding, channel_data, demux, framing, integrity, nonce, raw, rest};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = raw::parse_header(data) {
        for a in raw::Attributes::new(data, &h).counted() {
            let Ok(a) = a else { break };
            let v = a.value;
            let _ = raw::decode_address(v);
            let _ = raw::decode_xor_address(v, &h.transaction_id);
            let _ = raw::decode_error(v);
            let _ = raw::decode_text(v, raw::MAX_TEXT_LEN);
            let _ = raw::decode_u32(v);
            let _ = raw::decode_u64(v);
            let _ = raw::decode_channel_number(v);
            let _ = raw::decode_password_algorithm(v);
        }
        let _ = integrity::verify(data, &h, b"fuzz key");
        let _ = integrity::check_fingerprint(data, &h);
    }
    let _ = raw::parse_datagram(data);
    let _ = request::parse(data);
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
