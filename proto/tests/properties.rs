//! Property tests: what the writer builds, the parsers read back; integrity
//! written by the writer verifies; and no parser panics on any bytes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use natkit_proto::binding::{self, ChangeRequest, RequestOptions, SuccessFields};
use natkit_proto::channel_data;
use natkit_proto::demux::{self, PacketKind};
use natkit_proto::framing::{self, FrameKind};
use natkit_proto::integrity::{self, IntegrityError, IntegrityKind};
use natkit_proto::nonce::{NonceError, NonceKey};
use natkit_proto::raw::{self, attr, Attributes, Class, HEADER_LEN, MAGIC_COOKIE};
use natkit_proto::rest::{RestError, RestSecrets};
use natkit_proto::writer::Writer;
use proptest::prelude::*;

mod oracle;
mod strategies;

use strategies::{class, socket_addr};

/// Attributes other than the integrity and fingerprint ones, which have
/// placement rules of their own.
fn plain_attrs() -> impl Strategy<Value = Vec<(u16, Vec<u8>)>> {
    let typ = any::<u16>().prop_filter("not integrity or fingerprint", |t| {
        ![
            attr::MESSAGE_INTEGRITY,
            attr::MESSAGE_INTEGRITY_SHA256,
            attr::FINGERPRINT,
        ]
        .contains(t)
    });
    prop::collection::vec((typ, prop::collection::vec(any::<u8>(), 0..48)), 0..8)
}

/// Bytes shaped like a STUN message (right header and length) around an
/// arbitrary attribute section, so the fuzzing reaches attribute parsing.
fn stun_shaped() -> impl Strategy<Value = Vec<u8>> {
    (
        0u16..0x4000,
        any::<[u8; 12]>(),
        prop::collection::vec(any::<u8>(), 0..40usize),
    )
        .prop_map(|(t, tid, words)| {
            let mut body: Vec<u8> = words;
            body.resize(body.len() & !3, 0);
            let mut m = Vec::with_capacity(HEADER_LEN + body.len());
            m.extend_from_slice(&t.to_be_bytes());
            m.extend_from_slice(&(body.len() as u16).to_be_bytes());
            m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
            m.extend_from_slice(&tid);
            m.extend_from_slice(&body);
            m
        })
}

/// A Writer-built message with well-formed attribute framing but arbitrary
/// values, then `flips` random byte changes: near-valid input.
fn mutated_message() -> impl Strategy<Value = Vec<u8>> {
    (
        plain_attrs(),
        any::<bool>(),
        any::<bool>(),
        prop::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    )
        .prop_map(|(attrs, mi, fp, flips)| {
            let mut buf = vec![0u8; 1024];
            let mut w = Writer::new(&mut buf, 1, Class::Request, &[5; 12]).unwrap();
            for (t, v) in &attrs {
                w.bytes(*t, v).unwrap();
            }
            if mi {
                w.message_integrity(b"key").unwrap();
            }
            let n = if fp {
                w.fingerprint().unwrap()
            } else {
                w.finish()
            };
            buf.truncate(n);
            for (i, b) in flips {
                let i = i % buf.len();
                buf[i] ^= b;
            }
            buf
        })
}

/// Types every parser here (and stun-rs) knows, so random values reach the
/// attribute value decoders rather than stopping at framing.
const KNOWN_TYPES: &[u16] = &[
    attr::MAPPED_ADDRESS,
    attr::CHANGE_REQUEST,
    attr::USERNAME,
    attr::MESSAGE_INTEGRITY,
    attr::ERROR_CODE,
    attr::UNKNOWN_ATTRIBUTES,
    attr::CHANNEL_NUMBER,
    attr::LIFETIME,
    attr::XOR_PEER_ADDRESS,
    attr::DATA,
    attr::REALM,
    attr::NONCE,
    attr::XOR_RELAYED_ADDRESS,
    attr::REQUESTED_ADDRESS_FAMILY,
    attr::EVEN_PORT,
    attr::REQUESTED_TRANSPORT,
    attr::DONT_FRAGMENT,
    attr::MESSAGE_INTEGRITY_SHA256,
    attr::PASSWORD_ALGORITHM,
    attr::USERHASH,
    attr::XOR_MAPPED_ADDRESS,
    attr::RESERVATION_TOKEN,
    attr::PRIORITY,
    attr::USE_CANDIDATE,
    attr::PADDING,
    attr::RESPONSE_PORT,
    attr::ADDITIONAL_ADDRESS_FAMILY,
    attr::ADDRESS_ERROR_CODE,
    attr::PASSWORD_ALGORITHMS,
    attr::ALTERNATE_DOMAIN,
    attr::ICMP,
    attr::SOFTWARE,
    attr::ALTERNATE_SERVER,
    attr::FINGERPRINT,
    attr::ICE_CONTROLLED,
    attr::ICE_CONTROLLING,
    attr::RESPONSE_ORIGIN,
    attr::OTHER_ADDRESS,
];

/// Well-framed messages of known attribute types with arbitrary values.
fn known_type_message() -> impl Strategy<Value = Vec<u8>> {
    let one = (
        prop::sample::select(KNOWN_TYPES),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..24),
            // Lengths the decoders expect (4, 8, 20, 32), with junk inside.
            prop::sample::select(&[4usize, 8, 20, 32][..])
                .prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)),
        ],
    );
    (0u16..0x4000, prop::collection::vec(one, 1..6)).prop_map(|(t, attrs)| {
        let mut buf = vec![0u8; 512];
        let mut w = Writer::new(&mut buf, t & 0xFFF, Class::of(t), &[6; 12]).unwrap();
        for (t, v) in &attrs {
            w.bytes(*t, v).unwrap();
        }
        let n = w.finish();
        buf.truncate(n);
        buf
    })
}

fn any_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        stun_shaped(),
        mutated_message(),
        known_type_message(),
    ]
}

/// Run every parser over `bytes`; the property is that none panics (and
/// that parsers agree where they overlap).
fn exercise_all_parsers(bytes: &[u8]) {
    if let Ok(h) = raw::parse_header(bytes) {
        let n = Attributes::new(bytes, &h).count();
        assert!(n <= bytes.len() / 4 + 1);
        let _ = integrity::verify(bytes, &h, b"key");
        let _ = integrity::verify(bytes, &h, &[]);
        let _ = integrity::check_fingerprint(bytes, &h);
    }
    let _ = raw::parse_datagram(bytes);
    let _ = binding::parse_request(bytes);
    let _ = binding::parse_response(bytes);
    let cd = channel_data::decode(bytes);
    if let Ok(cd) = cd {
        assert!(channel_data::is_channel_number(cd.channel));
        assert!(cd.data.len() + channel_data::HEADER_LEN <= bytes.len());
    }
    for allow in [false, true] {
        if let Ok(Some(f)) = framing::next_frame(bytes, allow, 2048) {
            assert!(f.message_len <= f.consumed && f.consumed <= bytes.len());
        }
    }
    for turn in [false, true] {
        let k = demux::classify(bytes, turn);
        assert_eq!(k == PacketKind::Stun, matches!(bytes.first(), Some(0..=3)));
    }
}

proptest! {
    #[test]
    fn writer_messages_round_trip_through_raw(
        method in 0u16..0x1000,
        class in class(),
        tid in any::<[u8; 12]>(),
        attrs in prop::collection::vec((any::<u16>(), prop::collection::vec(any::<u8>(), 0..64)), 0..10),
    ) {
        let mut buf = vec![0u8; 2048];
        let mut w = Writer::new(&mut buf, method, class, &tid).unwrap();
        for (t, v) in &attrs {
            w.bytes(*t, v).unwrap();
        }
        let n = w.finish();
        let m = &buf[..n];
        let h = raw::parse_datagram(m).unwrap();
        prop_assert_eq!(h.method(), method);
        prop_assert_eq!(h.class(), class);
        prop_assert_eq!(h.transaction_id, tid);
        prop_assert_eq!(h.total_len(), n);
        prop_assert_eq!(n % 4, 0);
        let got: Vec<(u16, Vec<u8>)> = Attributes::new(m, &h)
            .map(|a| a.map(|a| (a.typ, a.value.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        prop_assert_eq!(got, attrs);
    }

    #[test]
    fn writer_integrity_verifies_and_detects_changes(
        attrs in plain_attrs(),
        key in prop::collection::vec(any::<u8>(), 0..40),
        sha256 in any::<bool>(),
        fingerprint in any::<bool>(),
        flip in any::<usize>(),
    ) {
        let mut buf = vec![0u8; 1024];
        let mut w = Writer::new(&mut buf, 3, Class::Request, &[1; 12]).unwrap();
        for (t, v) in &attrs {
            w.bytes(*t, v).unwrap();
        }
        let mac_start = w.len();
        if sha256 {
            w.message_integrity_sha256(&key).unwrap();
        } else {
            w.message_integrity(&key).unwrap();
        }
        let n = if fingerprint { w.fingerprint().unwrap() } else { w.finish() };
        let m = &mut buf[..n];
        let h = raw::parse_datagram(m).unwrap();
        let want = if sha256 { IntegrityKind::Sha256 } else { IntegrityKind::Sha1 };
        prop_assert_eq!(integrity::verify(m, &h, &key), Ok(want));
        prop_assert_eq!(integrity::check_fingerprint(m, &h), Ok(fingerprint));
        // Not `key || 0`: HMAC pads short keys with zeros, so that would be
        // the same key.
        let mut other = key.clone();
        other.push(1);
        prop_assert_eq!(integrity::verify(m, &h, &other), Err(IntegrityError::Mismatch));
        // Any change to an attribute byte before the MAC is caught (header
        // bytes may instead make the message unparseable; skip them here).
        if mac_start > HEADER_LEN {
            let i = HEADER_LEN + flip % (mac_start - HEADER_LEN);
            m[i] ^= 0x01;
            prop_assert!(integrity::verify(m, &h, &key).is_err());
        }
    }

    #[test]
    fn parsers_never_panic(bytes in any_input()) {
        exercise_all_parsers(&bytes);
    }

    #[test]
    fn binding_request_round_trip(
        tid in any::<[u8; 12]>(),
        change in prop::option::of((any::<bool>(), any::<bool>())),
        response_port in prop::option::of(any::<u16>()),
        padding in prop::option::of(0u16..600),
        fingerprint in any::<bool>(),
    ) {
        let opts = RequestOptions {
            change: change.map(|(ip, port)| ChangeRequest { ip, port }),
            response_port,
            padding,
            fingerprint,
        };
        let mut buf = [0u8; 1024];
        let n = binding::write_request(&mut buf, &tid, &opts).unwrap();
        let req = binding::parse_request(&buf[..n]).unwrap();
        prop_assert_eq!(req.transaction_id, tid);
        prop_assert_eq!(req.change, opts.change);
        prop_assert_eq!(req.response_port, response_port);
        prop_assert_eq!(req.padding, padding);
        prop_assert_eq!(req.fingerprint, fingerprint);
        prop_assert!(req.unknown().is_empty());
        prop_assert_eq!(demux::classify(&buf[..n], true), PacketKind::Stun);
        // A request is not a response.
        prop_assert!(binding::parse_response(&buf[..n]).is_err());
    }

    #[test]
    fn binding_success_round_trip(
        tid in any::<[u8; 12]>(),
        mapped in socket_addr(),
        origin in prop::option::of(socket_addr()),
        other in prop::option::of(socket_addr()),
        padding in prop::option::of(0u16..600),
        fingerprint in any::<bool>(),
    ) {
        let f = SuccessFields {
            mapped,
            response_origin: origin,
            other_address: other,
            padding,
            fingerprint,
        };
        let mut buf = [0u8; 1024];
        let n = binding::write_success(&mut buf, &tid, &f).unwrap();
        let r = binding::parse_response(&buf[..n]).unwrap();
        prop_assert_eq!(r.transaction_id, tid);
        prop_assert_eq!(r.outcome, Ok(()));
        prop_assert_eq!(r.mapped, Some(mapped));
        prop_assert_eq!(r.response_origin, origin);
        prop_assert_eq!(r.other_address, other);
        // stun-rs reads the same message.
        prop_assert_eq!(oracle::check(&buf[..n], &oracle::key()), Ok(oracle::Outcome::BothAccept));
    }

    #[test]
    fn binding_error_round_trip(
        tid in any::<[u8; 12]>(),
        code in 300u16..700,
        unknown in prop::collection::vec(0u16..0x8000, 0..4),
        fingerprint in any::<bool>(),
    ) {
        let mut buf = [0u8; 128];
        let n = binding::write_error(&mut buf, raw::method::BINDING, &tid, code, &unknown, fingerprint)
            .unwrap();
        let r = binding::parse_response(&buf[..n]).unwrap();
        prop_assert_eq!(r.transaction_id, tid);
        prop_assert_eq!(r.outcome, Err(code));
        prop_assert_eq!(r.mapped, None);
        prop_assert_eq!(oracle::check(&buf[..n], &oracle::key()), Ok(oracle::Outcome::BothAccept));
    }

    #[test]
    fn channel_data_round_trip(
        channel in channel_data::CHANNEL_MIN..=channel_data::CHANNEL_MAX,
        data in prop::collection::vec(any::<u8>(), 0..300),
        stream in any::<bool>(),
    ) {
        let mut buf = vec![0xEEu8; 400];
        let n = channel_data::encode(&mut buf, channel, &data, stream).unwrap();
        prop_assert_eq!(n, channel_data::framed_len(data.len(), stream));
        if stream {
            prop_assert_eq!(n % 4, 0);
            prop_assert!(buf[channel_data::HEADER_LEN + data.len()..n].iter().all(|&b| b == 0));
        }
        let cd = channel_data::decode(&buf[..n]).unwrap();
        prop_assert_eq!(cd.channel, channel);
        prop_assert_eq!(cd.data, &data[..]);
        prop_assert_eq!(demux::classify(&buf[..n], true), PacketKind::ChannelData);
        prop_assert_eq!(demux::classify(&buf[..n], false), PacketKind::Quic);
    }

    #[test]
    fn channel_data_rejects_channels_out_of_range(
        channel in any::<u16>().prop_filter("invalid", |c| !channel_data::is_channel_number(*c)),
        data in prop::collection::vec(any::<u8>(), 0..16),
    ) {
        let mut buf = [0u8; 32];
        prop_assert!(channel_data::encode(&mut buf, channel, &data, false).is_err());
        buf[..2].copy_from_slice(&channel.to_be_bytes());
        prop_assert!(channel_data::decode(&buf).is_err());
    }

    #[test]
    fn stream_framing_splits_concatenated_frames(
        frames in prop::collection::vec(
            prop_oneof![
                (any::<[u8; 12]>(), any::<bool>()).prop_map(|(tid, fp)| (true, tid.to_vec(), fp)),
                (prop::collection::vec(any::<u8>(), 0..40), any::<bool>()).prop_map(|(d, _)| (false, d, false)),
            ],
            1..6,
        ),
        cut in any::<usize>(),
    ) {
        // Serialize a mix of STUN and ChannelData frames back to back, as on
        // a TURN TCP connection.
        let mut stream = Vec::new();
        let mut want = Vec::new();
        for (is_stun, bytes, fp) in &frames {
            let mut buf = [0u8; 128];
            let (kind, n, msg_len) = if *is_stun {
                let tid: [u8; 12] = bytes[..].try_into().unwrap();
                let n = binding::write_request(&mut buf, &tid, &RequestOptions { fingerprint: *fp, ..Default::default() }).unwrap();
                (FrameKind::Stun, n, n)
            } else {
                let n = channel_data::encode(&mut buf, 0x4001, bytes, true).unwrap();
                (FrameKind::ChannelData, n, channel_data::HEADER_LEN + bytes.len())
            };
            stream.extend_from_slice(&buf[..n]);
            want.push((kind, msg_len, n));
        }
        // Any strict prefix of the first frame asks for more bytes.
        let first = want[0].2;
        prop_assert_eq!(framing::next_frame(&stream[..cut % first], true, 4096), Ok(None));
        let mut at = 0;
        let mut got = Vec::new();
        while at < stream.len() {
            let f = framing::next_frame(&stream[at..], true, 4096).unwrap().unwrap();
            got.push((f.kind, f.message_len, f.consumed));
            at += f.consumed;
        }
        prop_assert_eq!(got, want);
    }

    #[test]
    fn nonces_round_trip_and_bind_the_client(
        key in any::<[u8; 32]>(),
        client in socket_addr(),
        other in socket_addr(),
        issued in 0u64..4_000_000_000,
        age in 0u64..1_000,
    ) {
        let k = NonceKey::from_bytes(key);
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let n = k.issue(client, t(issued));
        let max = Duration::from_secs(600);
        let r = k.verify(n.as_str(), client, t(issued + age), max);
        prop_assert_eq!(r, if age <= 600 { Ok(()) } else { Err(NonceError::Stale) });
        let same = other.ip().to_canonical() == client.ip().to_canonical() && other.port() == client.port();
        if !same {
            prop_assert_eq!(k.verify(n.as_str(), other, t(issued), max), Err(NonceError::Invalid));
        }
    }

    #[test]
    fn nonce_and_rest_never_panic_on_arbitrary_text(text in ".{0,80}", client in socket_addr()) {
        let k = NonceKey::from_bytes([9; 32]);
        prop_assert_eq!(
            k.verify(&text, client, SystemTime::now(), Duration::from_secs(600)),
            Err(NonceError::Invalid)
        );
        let s = RestSecrets::new(["k"]);
        match s.password_for(&text, UNIX_EPOCH) {
            Ok(p) => prop_assert_eq!(p.len(), 28),
            Err(RestError::Malformed(_)) | Err(RestError::Expired { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected {e:?}"),
        }
    }

    #[test]
    fn rest_credentials_verify_until_expiry(
        user in "[a-zA-Z0-9@.:_-]{0,24}",
        secret in prop::collection::vec(any::<u8>(), 1..40),
        now in 0u64..4_000_000_000,
        ttl in 0u64..100_000,
    ) {
        let t = |s: u64| UNIX_EPOCH + Duration::from_secs(s);
        let s = RestSecrets::new([secret]);
        let c = s.generate(&user, Duration::from_secs(ttl), t(now)).unwrap();
        prop_assert_eq!(s.verify(&c.username, &c.password, t(now + ttl)), Ok(()));
        prop_assert_eq!(
            s.verify(&c.username, &c.password, t(now + ttl + 1)),
            Err(RestError::Expired { expired_at: now + ttl })
        );
    }
}
