//! Differential property tests: natkit's walker against `stun-rs` (see
//! `oracle/mod.rs` for what is compared and the allowed differences).
//! Messages are built with natkit's writer from many attribute kinds, then
//! (in the second property) mutated: truncated, bit-flipped, given lying
//! length fields, extended after FINGERPRINT, signed with the wrong key.

mod oracle;
mod strategies;

use strategies::{class, socket_addr};

use std::net::SocketAddr;

use natkit_proto::raw::{self, attr, method, Attributes, Class, HEADER_LEN, MAGIC_COOKIE};
use natkit_proto::writer::Writer;
use oracle::{Difference, Outcome};
use proptest::prelude::*;

/// One attribute to write.
#[derive(Debug, Clone)]
enum Spec {
    Address(u16, SocketAddr),
    XorAddress(u16, SocketAddr),
    Error(u16, String),
    Text(u16, String),
    U32(u16, u32),
    U64(u16, u64),
    /// A 4-byte value whose first byte is the field (protocol, family).
    Leading(u16, u8),
    /// CHANNEL-NUMBER or RESPONSE-PORT: 16 bits, 16 reserved.
    High16(u16, u16),
    EvenPort(bool),
    PasswordAlgorithm(u16, Vec<u8>),
    /// Any value: DATA, PADDING, flags, unknown types, or a known type with
    /// a value of the wrong shape.
    Raw(u16, Vec<u8>),
}

impl Spec {
    fn write(&self, w: &mut Writer) {
        let r = match self {
            Spec::Address(t, a) => w.address(*t, *a),
            Spec::XorAddress(t, a) => w.xor_address(*t, *a),
            Spec::Error(code, reason) => w.error_code(*code, reason),
            Spec::Text(t, s) => w.bytes(*t, s.as_bytes()),
            Spec::U32(t, v) => w.u32(*t, *v),
            Spec::U64(t, v) => w.u64(*t, *v),
            Spec::Leading(t, b) => w.u32(*t, (*b as u32) << 24),
            Spec::High16(t, v) => w.u32(*t, (*v as u32) << 16),
            Spec::EvenPort(r) => w.bytes(attr::EVEN_PORT, &[if *r { 0x80 } else { 0 }]),
            Spec::PasswordAlgorithm(n, params) => {
                let mut v = n.to_be_bytes().to_vec();
                v.extend_from_slice(&(params.len() as u16).to_be_bytes());
                v.extend_from_slice(params);
                v.resize((v.len() + 3) & !3, 0);
                w.bytes(attr::PASSWORD_ALGORITHM, &v)
            }
            Spec::Raw(t, v) => w.bytes(*t, v),
        };
        r.expect("the buffer holds every generated message");
    }
}

/// Text every decoder takes: the quoted-string grammar and the OpaqueString
/// profile leave these characters alone.
fn plain_text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9.:/+=_-]{{1,{max}}}")).expect("regex")
}

/// Well-formed attributes of every kind natkit reads, plus unknown types.
fn well_formed() -> impl Strategy<Value = Spec> {
    let address_types = prop::sample::select(vec![
        attr::MAPPED_ADDRESS,
        attr::RESPONSE_ORIGIN,
        attr::OTHER_ADDRESS,
        attr::ALTERNATE_SERVER,
    ]);
    let xor_types = prop::sample::select(vec![
        attr::XOR_MAPPED_ADDRESS,
        attr::XOR_PEER_ADDRESS,
        attr::XOR_RELAYED_ADDRESS,
    ]);
    let text_types = prop::sample::select(vec![
        attr::USERNAME,
        attr::REALM,
        attr::NONCE,
        attr::SOFTWARE,
    ]);
    let u32_types =
        prop::sample::select(vec![attr::LIFETIME, attr::PRIORITY, attr::CHANGE_REQUEST]);
    let u64_types = prop::sample::select(vec![
        attr::ICE_CONTROLLED,
        attr::ICE_CONTROLLING,
        attr::RESERVATION_TOKEN,
    ]);
    let family_types = prop::sample::select(vec![
        attr::REQUESTED_ADDRESS_FAMILY,
        attr::ADDITIONAL_ADDRESS_FAMILY,
    ]);
    let flag_types = prop::sample::select(vec![attr::DONT_FRAGMENT, attr::USE_CANDIDATE]);
    // Unassigned types of both ranges: stun-rs keeps them as unknown.
    let unknown_type = prop_oneof![0x7F00u16..=0x7FFF, 0xBF00u16..=0xBFFF];
    prop_oneof![
        (address_types, socket_addr()).prop_map(|(t, a)| Spec::Address(t, a)),
        (xor_types, socket_addr()).prop_map(|(t, a)| Spec::XorAddress(t, a)),
        (300u16..700, plain_text(40)).prop_map(|(c, r)| Spec::Error(c, r)),
        (text_types, plain_text(60)).prop_map(|(t, s)| Spec::Text(t, s)),
        (u32_types, any::<u32>()).prop_map(|(t, v)| Spec::U32(t, v)),
        (u64_types, any::<u64>()).prop_map(|(t, v)| Spec::U64(t, v)),
        any::<u8>().prop_map(|p| Spec::Leading(attr::REQUESTED_TRANSPORT, p)),
        (family_types, 1u8..=2).prop_map(|(t, f)| Spec::Leading(t, f)),
        any::<u16>().prop_map(|c| Spec::High16(attr::CHANNEL_NUMBER, c)),
        any::<u16>().prop_map(|p| Spec::High16(attr::RESPONSE_PORT, p)),
        any::<bool>().prop_map(Spec::EvenPort),
        (0u16..4, prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(n, p)| Spec::PasswordAlgorithm(n, p)),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|d| Spec::Raw(attr::DATA, d)),
        (0usize..64).prop_map(|n| Spec::Raw(attr::PADDING, vec![0; n])),
        flag_types.prop_map(|t| Spec::Raw(t, Vec::new())),
        (unknown_type, prop::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(t, v)| Spec::Raw(t, v)),
    ]
}

/// Values at the edges: wrong sizes, unknown families, non-ASCII and
/// non-UTF-8 text, long text, any type with any value.
fn edgy() -> impl Strategy<Value = Spec> {
    let sizes = prop::sample::select(vec![0usize, 1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 19, 20, 21, 24]);
    prop_oneof![
        (
            prop::sample::select(vec![
                attr::MAPPED_ADDRESS,
                attr::XOR_MAPPED_ADDRESS,
                attr::XOR_PEER_ADDRESS,
                attr::LIFETIME,
                attr::CHANNEL_NUMBER,
                attr::RESPONSE_PORT,
                attr::REQUESTED_TRANSPORT,
                attr::REQUESTED_ADDRESS_FAMILY,
                attr::RESERVATION_TOKEN,
                attr::ICE_CONTROLLING,
                attr::EVEN_PORT,
                attr::ERROR_CODE,
                attr::PASSWORD_ALGORITHM,
                attr::CHANGE_REQUEST,
                attr::FINGERPRINT,
                attr::MESSAGE_INTEGRITY,
                attr::MESSAGE_INTEGRITY_SHA256,
            ]),
            sizes.prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)),
        )
            .prop_map(|(t, v)| Spec::Raw(t, v)),
        // Family byte 0x01/0x02 with an address of the other size.
        (
            prop::sample::select(vec![1u8, 2]),
            prop::sample::select(vec![8usize, 20])
        )
            .prop_map(|(f, n)| {
                let mut v = vec![0u8; n];
                v[1] = f;
                Spec::Raw(attr::XOR_MAPPED_ADDRESS, v)
            }),
        (
            prop::sample::select(vec![
                attr::REQUESTED_ADDRESS_FAMILY,
                attr::ADDITIONAL_ADDRESS_FAMILY
            ]),
            any::<u8>()
        )
            .prop_map(|(t, f)| Spec::Leading(t, f)),
        (
            prop::sample::select(vec![
                attr::USERNAME,
                attr::REALM,
                attr::NONCE,
                attr::SOFTWARE,
                attr::PADDING
            ]),
            prop_oneof![
                ".{0,12}".prop_map(String::into_bytes),
                "[ \"\\\\a-z]{0,12}".prop_map(String::into_bytes),
                prop::collection::vec(any::<u8>(), 0..12),
                (500usize..800).prop_map(|n| vec![b'a'; n]),
            ]
        )
            .prop_map(|(t, v)| Spec::Raw(t, v)),
        (300u16..700, ".{0,12}").prop_map(|(c, r)| Spec::Error(c, r)),
        // Around RFC 8489 §14.8's 763-byte bound on the reason phrase.
        (300u16..700, 740usize..790).prop_map(|(c, n)| Spec::Error(c, "r".repeat(n))),
        (prop::collection::vec(any::<u8>(), 4..8)).prop_map(|mut v| {
            // An ERROR-CODE with any class, number and reason bytes.
            v[0] = 0;
            Spec::Raw(attr::ERROR_CODE, v)
        }),
        (any::<u16>(), prop::collection::vec(any::<u8>(), 0..24))
            .prop_map(|(t, v)| Spec::Raw(t, v)),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Integrity {
    None,
    Sha1,
    Sha256,
    /// Truncated to 16-28 bytes (RFC 8489 §14.6).
    Sha256Truncated(usize),
    Both,
}

/// A message: header, attributes, integrity, attributes after it (which
/// must not count), FINGERPRINT.
#[derive(Debug, Clone)]
struct Message {
    method: u16,
    class: Class,
    tid: [u8; 12],
    attrs: Vec<Spec>,
    integrity: Integrity,
    after_integrity: Vec<Spec>,
    fingerprint: bool,
    wrong_key: bool,
}

impl Message {
    fn key(&self) -> &'static [u8] {
        if self.wrong_key {
            b"wrong"
        } else {
            oracle::PASSWORD.as_bytes()
        }
    }

    fn encode(&self) -> Vec<u8> {
        if let Integrity::Sha256Truncated(n) = self.integrity {
            return self.encode_truncated(n);
        }
        let mut buf = vec![0u8; 4096];
        let mut w = Writer::new(&mut buf, self.method, self.class, &self.tid).unwrap();
        for a in &self.attrs {
            a.write(&mut w);
        }
        let key = self.key();
        match self.integrity {
            Integrity::Sha1 => w.message_integrity(key).unwrap(),
            Integrity::Sha256 => w.message_integrity_sha256(key).unwrap(),
            Integrity::Both => {
                w.message_integrity(key).unwrap();
                w.message_integrity_sha256(key).unwrap();
            }
            Integrity::None | Integrity::Sha256Truncated(_) => {}
        }
        for a in &self.after_integrity {
            a.write(&mut w);
        }
        let n = if self.fingerprint {
            w.fingerprint().unwrap()
        } else {
            w.finish()
        };
        buf.truncate(n);
        buf
    }

    /// The writer only writes full MACs: a truncated one is appended by
    /// hand (RFC 8489 §14.6: the MAC's first `n` bytes, computed with the
    /// length field counting the attribute as sent).
    fn encode_truncated(&self, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 4096];
        let mut w = Writer::new(&mut buf, self.method, self.class, &self.tid).unwrap();
        for a in &self.attrs {
            a.write(&mut w);
        }
        let len = w.finish();
        buf.truncate(len);
        let key = self.key();
        oracle::append_computed(&mut buf, attr::MESSAGE_INTEGRITY_SHA256, n, |m| {
            natkit_proto::integrity::hmac_sha256(key, m).to_vec()
        });
        for a in &self.after_integrity {
            let (t, v) = a.value(&self.tid);
            oracle::append(&mut buf, t, &v);
        }
        if self.fingerprint {
            oracle::append_computed(&mut buf, attr::FINGERPRINT, 4, |m| {
                natkit_proto::integrity::fingerprint(m)
                    .to_be_bytes()
                    .to_vec()
            });
        }
        buf
    }
}

impl Spec {
    /// Type and value bytes, as the writer writes them.
    fn value(&self, tid: &[u8; 12]) -> (u16, Vec<u8>) {
        let mut buf = vec![0u8; 2048];
        let mut w = Writer::new(&mut buf, 1, Class::Request, tid).unwrap();
        self.write(&mut w);
        let n = w.finish();
        let h = raw::parse_datagram(&buf[..n]).unwrap();
        let a = Attributes::new(&buf[..n], &h).next().unwrap().unwrap();
        (a.typ, a.value.to_vec())
    }
}

fn method() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => Just(method::BINDING),
        1 => Just(method::ALLOCATE),
        1 => Just(method::CREATE_PERMISSION),
        1 => Just(method::CHANNEL_BIND),
        1 => Just(method::SEND),
        1 => 0u16..0x1000,
    ]
}

/// Messages every decoder must accept: well-formed attributes, one
/// integrity attribute of full length, the right key, FINGERPRINT last.
fn valid_message() -> impl Strategy<Value = Message> {
    (
        method(),
        class(),
        any::<[u8; 12]>(),
        prop::collection::vec(well_formed(), 0..10),
        prop::sample::select(vec![Integrity::None, Integrity::Sha1, Integrity::Sha256]),
        prop::collection::vec(well_formed(), 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(method, class, tid, attrs, integrity, after, fingerprint)| Message {
                method,
                class,
                tid,
                attrs,
                after_integrity: if integrity == Integrity::None {
                    Vec::new()
                } else {
                    after
                },
                integrity,
                fingerprint,
                wrong_key: false,
            },
        )
}

/// Anything goes: edge values mixed in, any integrity, the wrong key.
fn any_message() -> impl Strategy<Value = Message> {
    let spec = prop_oneof![3 => well_formed(), 2 => edgy()];
    let integrity = prop_oneof![
        Just(Integrity::None),
        Just(Integrity::Sha1),
        Just(Integrity::Sha256),
        Just(Integrity::Both),
        prop::sample::select(vec![16usize, 20, 24, 28]).prop_map(Integrity::Sha256Truncated),
    ];
    (
        method(),
        class(),
        any::<[u8; 12]>(),
        prop::collection::vec(spec.clone(), 0..8),
        integrity,
        prop::collection::vec(spec, 0..3),
        any::<bool>(),
        prop::bool::weighted(0.1),
    )
        .prop_map(
            |(method, class, tid, attrs, integrity, after_integrity, fingerprint, wrong_key)| {
                Message {
                    method,
                    class,
                    tid,
                    attrs,
                    integrity,
                    after_integrity,
                    fingerprint,
                    wrong_key,
                }
            },
        )
}

/// Damage done to an encoded message.
#[derive(Debug, Clone)]
enum Mutation {
    None,
    /// Cut `n` bytes off the end; with `fix`, the header's length follows.
    Truncate {
        n: usize,
        fix: bool,
    },
    FlipBit {
        at: usize,
        bit: u8,
    },
    /// Add `delta` to the length field of attribute number `index`.
    AttributeLength {
        index: usize,
        delta: i16,
    },
    /// Add `delta` to the header's length field.
    MessageLength {
        delta: i16,
    },
    /// Append bytes without touching the header.
    Trailing(Vec<u8>),
    /// Append a whole attribute (after FINGERPRINT, if there is one).
    AppendAttribute(u16, Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        2 => Just(Mutation::None),
        1 => (1usize..16, any::<bool>()).prop_map(|(n, fix)| Mutation::Truncate { n, fix }),
        2 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => (any::<usize>(), -8i16..=8).prop_map(|(index, delta)| Mutation::AttributeLength { index, delta }),
        1 => (-8i16..=8).prop_map(|delta| Mutation::MessageLength { delta }),
        1 => prop::collection::vec(any::<u8>(), 1..8).prop_map(Mutation::Trailing),
        1 => (any::<u16>(), prop::collection::vec(any::<u8>(), 0..8))
            .prop_map(|(t, v)| Mutation::AppendAttribute(t, v)),
    ]
}

fn add(field: &mut [u8], delta: i16) {
    let v = u16::from_be_bytes([field[0], field[1]]).wrapping_add_signed(delta);
    field.copy_from_slice(&v.to_be_bytes());
}

impl Mutation {
    fn apply(&self, m: &mut Vec<u8>) {
        match self {
            Mutation::None => {}
            Mutation::Truncate { n, fix } => {
                m.truncate(m.len().saturating_sub(*n).max(HEADER_LEN));
                if *fix {
                    let len = (m.len() - HEADER_LEN) as u16;
                    m[2..4].copy_from_slice(&len.to_be_bytes());
                }
            }
            Mutation::FlipBit { at, bit } => {
                let i = at % m.len();
                m[i] ^= 1 << bit;
            }
            Mutation::AttributeLength { index, delta } => {
                let h = raw::parse_datagram(m).unwrap();
                let offsets: Vec<usize> =
                    Attributes::new(m, &h).map(|a| a.unwrap().offset).collect();
                if !offsets.is_empty() {
                    let o = offsets[index % offsets.len()];
                    add(&mut m[o + 2..o + 4], *delta);
                }
            }
            Mutation::MessageLength { delta } => add(&mut m[2..4], *delta),
            Mutation::Trailing(extra) => m.extend_from_slice(extra),
            Mutation::AppendAttribute(t, v) => oracle::append(m, *t, v),
        }
    }
}

/// Arbitrary bytes and bytes shaped like STUN (right cookie and length).
fn raw_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..120),
        (
            0u16..0x4000,
            any::<[u8; 12]>(),
            prop::collection::vec(any::<u8>(), 0..80)
        )
            .prop_map(|(t, tid, mut body)| {
                body.truncate(body.len() & !3);
                let mut m = t.to_be_bytes().to_vec();
                m.extend_from_slice(&(body.len() as u16).to_be_bytes());
                m.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
                m.extend_from_slice(&tid);
                m.extend_from_slice(&body);
                m
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// The strongest form: on well-formed messages there is no allowed
    /// difference to hide behind; both accept and agree on every value.
    #[test]
    fn well_formed_messages_are_accepted_alike(m in valid_message()) {
        let bytes = m.encode();
        let outcome = oracle::check(&bytes, &oracle::key()).map_err(TestCaseError::fail)?;
        prop_assert_eq!(outcome, Outcome::BothAccept, "{:?}", m);
    }

    /// Edge values and damage: the two agree, or differ only as allowed.
    #[test]
    fn damaged_messages_are_judged_alike(m in any_message(), damage in mutation()) {
        let mut bytes = m.encode();
        damage.apply(&mut bytes);
        oracle::check(&bytes, &oracle::key())
            .map_err(|e| TestCaseError::fail(format!("{e}\n{m:?}\n{damage:?}")))?;
    }

    #[test]
    fn arbitrary_bytes_are_judged_alike(bytes in raw_bytes()) {
        oracle::check(&bytes, &oracle::key()).map_err(TestCaseError::fail)?;
    }
}

/// The generators are not vacuous: they reach agreement both ways and every
/// allowed difference (so each difference's recogniser is exercised).
#[test]
fn the_generators_reach_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    use std::collections::HashMap;

    let mut runner = TestRunner::deterministic();
    let strategy = (any_message(), mutation());
    let key = oracle::key();
    let mut seen: HashMap<Outcome, usize> = HashMap::new();
    for _ in 0..4000 {
        let (m, damage) = strategy.new_tree(&mut runner).unwrap().current();
        let mut bytes = m.encode();
        damage.apply(&mut bytes);
        let outcome = oracle::check(&bytes, &key).unwrap_or_else(|e| panic!("{e}"));
        *seen.entry(outcome).or_default() += 1;
    }
    println!("{seen:?}");
    let all = [
        Outcome::BothAccept,
        Outcome::BothReject,
        Outcome::Allowed(Difference::OverlongValue),
        Outcome::Allowed(Difference::TextRules),
        Outcome::Allowed(Difference::TruncatedSha256),
        Outcome::Allowed(Difference::AfterFingerprint),
        Outcome::Allowed(Difference::BothIntegrities),
        Outcome::Allowed(Difference::UnknownFamily),
        Outcome::Allowed(Difference::NotRead),
    ];
    for want in all {
        assert!(seen.contains_key(&want), "{want:?} never seen: {seen:?}");
    }
}
