//! Short codes: what `natkit send FILE --turn ...` (and `listen`) prints
//! and `natkit receive CODE` (and `connect`) takes, e.g.
//! `48213-copper-lagoon-tiger`.
//!
//! The number is the port of the waiting side's rendezvous allocation on
//! the relay both sides name with `--turn` (see `rendezvous`): it tells the
//! other side where to knock. The three words (8 bits each, from a list of
//! 256) are the secret: together with the number they are the SPAKE2
//! password. SPAKE2 gives a guesser one try per code, and the waiting side
//! gives up after one failed try, so 24 bits are plenty (magic-wormhole
//! uses 16); the relay sees the number but learns nothing about the words
//! from what it carries.

use std::fmt;

/// Words per code.
const WORDS: usize = 3;

/// One of 256 words per byte: short, distinct, easy to say and type.
static WORD_LIST: [&str; 256] = [
    "acid",
    "acorn",
    "actor",
    "adobe",
    "agent",
    "album",
    "alder",
    "alpha",
    "amber",
    "angle",
    "anvil",
    "apple",
    "apron",
    "arbor",
    "arena",
    "argon",
    "arrow",
    "aspen",
    "atlas",
    "attic",
    "aunt",
    "autumn",
    "bacon",
    "badge",
    "bagel",
    "baker",
    "bamboo",
    "banjo",
    "barley",
    "basil",
    "beach",
    "beaver",
    "berry",
    "birch",
    "biscuit",
    "bison",
    "blade",
    "blanket",
    "bonnet",
    "bottle",
    "brick",
    "bridge",
    "bronze",
    "brook",
    "bucket",
    "bugle",
    "butter",
    "cabin",
    "cactus",
    "camel",
    "candle",
    "canoe",
    "canyon",
    "carbon",
    "carpet",
    "carrot",
    "castle",
    "cedar",
    "cello",
    "chalk",
    "cherry",
    "chess",
    "cider",
    "circle",
    "citrus",
    "clover",
    "cobalt",
    "cobra",
    "cocoa",
    "comet",
    "copper",
    "coral",
    "cotton",
    "cougar",
    "crane",
    "crater",
    "crayon",
    "cycle",
    "daisy",
    "dancer",
    "delta",
    "denim",
    "desert",
    "diamond",
    "dingo",
    "dolphin",
    "domino",
    "donkey",
    "dragon",
    "drum",
    "eagle",
    "easel",
    "echo",
    "elbow",
    "elm",
    "emerald",
    "engine",
    "falcon",
    "feather",
    "fennel",
    "fern",
    "ferret",
    "fiddle",
    "fig",
    "flame",
    "flute",
    "forest",
    "fossil",
    "fox",
    "garden",
    "garlic",
    "gecko",
    "geyser",
    "ginger",
    "globe",
    "goose",
    "granite",
    "grape",
    "gravel",
    "guitar",
    "hammer",
    "harp",
    "hatchet",
    "hazel",
    "helmet",
    "heron",
    "honey",
    "hornet",
    "hunter",
    "iceberg",
    "igloo",
    "indigo",
    "iris",
    "island",
    "ivory",
    "jacket",
    "jaguar",
    "jelly",
    "jigsaw",
    "jungle",
    "kayak",
    "kernel",
    "kettle",
    "kiwi",
    "koala",
    "ladder",
    "lagoon",
    "lantern",
    "lava",
    "lemon",
    "lentil",
    "lily",
    "lime",
    "linen",
    "lizard",
    "lobster",
    "locket",
    "lotus",
    "lunar",
    "magnet",
    "mammoth",
    "mango",
    "maple",
    "marble",
    "meadow",
    "melon",
    "meteor",
    "mint",
    "mirror",
    "mitten",
    "mosaic",
    "muffin",
    "mustard",
    "nectar",
    "needle",
    "nickel",
    "noodle",
    "nutmeg",
    "oak",
    "oasis",
    "ocean",
    "olive",
    "onion",
    "opal",
    "orange",
    "orbit",
    "orchid",
    "otter",
    "oyster",
    "paddle",
    "panda",
    "papaya",
    "pebble",
    "penguin",
    "pepper",
    "piano",
    "pickle",
    "pilot",
    "pine",
    "pistachio",
    "planet",
    "plum",
    "pony",
    "poppy",
    "potato",
    "pretzel",
    "prism",
    "pumpkin",
    "puzzle",
    "quartz",
    "quill",
    "rabbit",
    "radar",
    "radish",
    "raven",
    "reef",
    "rhubarb",
    "ribbon",
    "river",
    "robin",
    "rose",
    "ruby",
    "salmon",
    "sandal",
    "sardine",
    "satin",
    "shadow",
    "shell",
    "silver",
    "sketch",
    "spider",
    "spruce",
    "squid",
    "stone",
    "sugar",
    "summit",
    "teapot",
    "thistle",
    "tiger",
    "timber",
    "tofu",
    "tomato",
    "topaz",
    "tulip",
    "tundra",
    "turtle",
    "velvet",
    "violet",
    "walnut",
    "whale",
    "willow",
    "window",
    "winter",
    "yogurt",
    "zebra",
    "zinc",
];

/// A short code: the rendezvous port and the secret words.
#[derive(Clone, PartialEq, Eq)]
pub struct ShortCode {
    /// The waiting side's relayed port on the relay.
    pub port: u16,
    words: [u8; WORDS],
}

/// Why a code does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    /// Not NUMBER-word-word-word.
    #[error("a short code looks like 48213-copper-lagoon-tiger (a number and {WORDS} words)")]
    Shape,
    /// The number is not a port.
    #[error("{0:?} is not a port number (1-65535)")]
    Port(String),
    /// A word that is not in the list: a typo.
    #[error("{0:?} is not one of the code's words: check the spelling")]
    Word(String),
}

impl ShortCode {
    /// A fresh code for the rendezvous port `port`, words from the
    /// system's random number generator.
    pub fn new(port: u16) -> ShortCode {
        use rand::RngCore;
        let mut words = [0u8; WORDS];
        rand::rngs::OsRng.fill_bytes(&mut words);
        ShortCode { port, words }
    }

    /// Parse a code as typed: case and surrounding spaces do not matter,
    /// words may be separated by `-`, spaces or both.
    pub fn parse(s: &str) -> Result<ShortCode, CodeError> {
        let lower = s.trim().to_ascii_lowercase();
        let parts: Vec<&str> = lower
            .split(|c: char| c == '-' || c.is_whitespace())
            .filter(|p| !p.is_empty())
            .collect();
        let [port, words @ ..] = parts.as_slice() else {
            return Err(CodeError::Shape);
        };
        if words.len() != WORDS || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CodeError::Shape);
        }
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ => return Err(CodeError::Port((*port).to_owned())),
        };
        let mut out = [0u8; WORDS];
        for (o, w) in out.iter_mut().zip(words) {
            let i = WORD_LIST
                .binary_search(w)
                .map_err(|_| CodeError::Word((*w).to_owned()))?;
            *o = i as u8;
        }
        Ok(ShortCode { port, words: out })
    }

    /// Whether `s` is meant as a code rather than a description (a
    /// description starts with `nk1.` or `{`): it starts with digits and
    /// a dash.
    pub fn looks_like_one(s: &str) -> bool {
        let s = s.trim_start();
        let digits = s.bytes().take_while(u8::is_ascii_digit).count();
        digits > 0 && s[digits..].starts_with(['-', ' '])
    }

    /// The SPAKE2 password: the whole code in its one canonical spelling.
    pub fn password(&self) -> Vec<u8> {
        self.to_string().into_bytes()
    }
}

impl fmt::Display for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.port)?;
        for &w in &self.words {
            write!(f, "-{}", WORD_LIST[usize::from(w)])?;
        }
        Ok(())
    }
}

/// The words are the secret: logs and panics show the port only.
impl fmt::Debug for ShortCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ShortCode({}-<redacted>)", self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One typo must not make another valid word (the code would parse,
    /// SPAKE2 would fail, and the waiting side gives up after one try):
    /// every two words differ by at least two edits.
    #[test]
    fn no_two_words_are_one_typo_apart() {
        fn one_edit(a: &str, b: &str) -> bool {
            let (a, b) = if a.len() <= b.len() { (a, b) } else { (b, a) };
            match b.len() - a.len() {
                0 => a.bytes().zip(b.bytes()).filter(|(x, y)| x != y).count() <= 1,
                1 => (0..b.len()).any(|i| b[..i].to_owned() + &b[i + 1..] == a),
                _ => false,
            }
        }
        for (i, a) in WORD_LIST.iter().enumerate() {
            for b in &WORD_LIST[i + 1..] {
                assert!(!one_edit(a, b), "{a} and {b} are one typo apart");
            }
        }
    }

    #[test]
    fn the_list_is_sorted_and_distinct_so_lookups_work() {
        assert!(WORD_LIST.windows(2).all(|w| w[0] < w[1]));
        assert!(WORD_LIST
            .iter()
            .all(|w| w.bytes().all(|b| b.is_ascii_lowercase())));
    }

    #[test]
    fn codes_round_trip_and_forgive_case_and_spacing() {
        for _ in 0..50 {
            let c = ShortCode::new(48213);
            assert_eq!(ShortCode::parse(&c.to_string()).unwrap(), c);
        }
        let c = ShortCode::parse(" 48213 Copper-LAGOON  tiger\n").unwrap();
        assert_eq!(c.to_string(), "48213-copper-lagoon-tiger");
        assert_eq!(c.password(), b"48213-copper-lagoon-tiger");
        assert!(!format!("{c:?}").contains("copper"));
    }

    #[test]
    fn bad_codes_say_what_is_wrong() {
        assert_eq!(ShortCode::parse(""), Err(CodeError::Shape));
        assert_eq!(
            ShortCode::parse("48213-copper-lagoon"),
            Err(CodeError::Shape)
        );
        assert_eq!(
            ShortCode::parse("48213-copper-lagoon-tiger-zinc"),
            Err(CodeError::Shape)
        );
        assert_eq!(
            ShortCode::parse("70000-copper-lagoon-tiger"),
            Err(CodeError::Port("70000".into()))
        );
        assert_eq!(
            ShortCode::parse("0-copper-lagoon-tiger"),
            Err(CodeError::Port("0".into()))
        );
        assert_eq!(
            ShortCode::parse("48213-coper-lagoon-tiger"),
            Err(CodeError::Word("coper".into()))
        );
    }

    #[test]
    fn codes_and_descriptions_are_told_apart() {
        assert!(ShortCode::looks_like_one("48213-copper-lagoon-tiger"));
        assert!(ShortCode::looks_like_one("48213 copper lagoon tiger"));
        assert!(!ShortCode::looks_like_one("nk1.AAAA"));
        assert!(!ShortCode::looks_like_one("{\"ufrag\":1}"));
        assert!(!ShortCode::looks_like_one("copper-48213"));
    }
}
