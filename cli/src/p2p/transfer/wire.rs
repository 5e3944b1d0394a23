//! The offer and the answer of a transfer on the wire (see the module
//! above for the layout): big-endian integers, strings with a u16 length.

use anyhow::{bail, Context};
use tokio::io::{AsyncRead, AsyncReadExt};

/// The offer's first bytes.
pub const OFFER_MAGIC: &[u8; 4] = b"NKH3";
/// Most entries in one offer (a folder of a million files is a lot).
pub const MAX_ENTRIES: u32 = 1_000_000;
/// Size of an entry whose size is not known (stdin).
pub const UNKNOWN: u64 = u64::MAX;

/// What the offer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One regular file.
    File = 0,
    /// A folder: its entries are relative to it.
    Folder = 1,
    /// Bytes of unknown length (stdin), framed.
    Stream = 2,
    /// Several files and folders (`natkit send a b dir/`): entries are
    /// relative to the receiver's directory, each top-level one under its
    /// own name; the offer's name only describes them ("3 items").
    Many = 3,
}

/// One entry of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// A directory (no data; made on the receiving side, also when empty).
    pub dir: bool,
    /// The path inside the offer, components separated by `/`.
    pub rel: String,
    /// Bytes, or [`UNKNOWN`].
    pub size: u64,
}

/// The offer: what, its name, its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub kind: Kind,
    pub name: String,
    pub entries: Vec<Entry>,
}

impl Offer {
    /// Bytes in all entries (`None` for a stream).
    pub fn total(&self) -> Option<u64> {
        if self.kind == Kind::Stream {
            return None;
        }
        Some(self.entries.iter().filter(|e| !e.dir).map(|e| e.size).sum())
    }

    /// The offer as sent.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = OFFER_MAGIC.to_vec();
        v.push(self.kind as u8);
        put_str(&mut v, &self.name);
        v.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            v.push(u8::from(e.dir));
            put_str(&mut v, &e.rel);
            v.extend_from_slice(&e.size.to_be_bytes());
        }
        v
    }

    /// Read an offer.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<Offer> {
        let mut magic = [0u8; 4];
        r.read_exact(&mut magic)
            .await
            .context("the sender's offer did not arrive")?;
        if &magic != OFFER_MAGIC {
            bail!("the peer sent no natkit offer (another natkit version?)");
        }
        let kind = match r.read_u8().await.context("offer cut short")? {
            0 => Kind::File,
            1 => Kind::Folder,
            2 => Kind::Stream,
            3 => Kind::Many,
            k => bail!("the sender offers a kind of transfer this natkit does not know ({k})"),
        };
        let name = get_str(r).await?;
        let n = r.read_u32().await.context("offer cut short")?;
        if n > MAX_ENTRIES {
            bail!("the sender offers {n} entries, more than the {MAX_ENTRIES} accepted");
        }
        let mut entries = Vec::with_capacity(n.min(1024) as usize);
        for _ in 0..n {
            let dir = r.read_u8().await.context("offer cut short")? != 0;
            let rel = get_str(r).await?;
            let size = r.read_u64().await.context("offer cut short")?;
            entries.push(Entry { dir, rel, size });
        }
        let one = entries.len() == 1 && !entries[0].dir;
        if matches!(kind, Kind::File | Kind::Stream) && !one {
            bail!(
                "the sender's offer of a single file has {} entries",
                entries.len()
            );
        }
        if kind == Kind::Many && entries.is_empty() {
            bail!("the sender's offer of several files is empty");
        }
        Ok(Offer {
            kind,
            name,
            entries,
        })
    }

    /// What is in the offer, per top-level name, in order: the name
    /// (folders with a trailing `/`), its files and their bytes.
    pub fn top_level(&self) -> Vec<(String, usize, u64)> {
        let mut out: Vec<(String, usize, u64)> = Vec::new();
        for e in &self.entries {
            let (top, nested) = match e.rel.split_once('/') {
                Some((t, _)) => (t, true),
                None => (e.rel.as_str(), false),
            };
            let shown = if e.dir || nested {
                format!("{top}/")
            } else {
                top.to_owned()
            };
            let i = match out.iter().position(|(n, ..)| *n == shown) {
                Some(i) => i,
                None => {
                    out.push((shown, 0, 0));
                    out.len() - 1
                }
            };
            if !e.dir {
                out[i].1 += 1;
                out[i].2 += e.size;
            }
        }
        out
    }
}

fn put_str(v: &mut Vec<u8>, s: &str) {
    // Names are checked to fit (a component is at most 255 bytes and a
    // path at most MAX_PATH) before they get here.
    v.extend_from_slice(&(s.len() as u16).to_be_bytes());
    v.extend_from_slice(s.as_bytes());
}

async fn get_str<R: AsyncRead + Unpin>(r: &mut R) -> anyhow::Result<String> {
    let n = r.read_u16().await.context("offer cut short")?;
    let mut b = vec![0u8; usize::from(n)];
    r.read_exact(&mut b).await.context("offer cut short")?;
    String::from_utf8(b).context("a name in the sender's offer is not UTF-8")
}

/// What the receiver already has of one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Have {
    /// The bytes are a complete file in place (not a part file): the
    /// sender skips it if it is the same, else sends it whole.
    pub complete: bool,
    /// How many bytes.
    pub len: u64,
    /// Their SHA-256.
    pub hash: [u8; 32],
}

impl Have {
    pub const WIRE: usize = 1 + 8 + 32;

    pub fn encode(&self, v: &mut Vec<u8>) {
        v.push(u8::from(self.complete));
        v.extend_from_slice(&self.len.to_be_bytes());
        v.extend_from_slice(&self.hash);
    }

    pub fn decode(b: &[u8; Self::WIRE]) -> Have {
        Have {
            complete: b[0] != 0,
            len: u64::from_be_bytes(b[1..9].try_into().expect("8 bytes")),
            hash: b[9..].try_into().expect("32 bytes"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn offers_round_trip_and_nonsense_is_refused() {
        let o = Offer {
            kind: Kind::Folder,
            name: "photos".into(),
            entries: vec![
                Entry {
                    dir: true,
                    rel: "2024".into(),
                    size: 0,
                },
                Entry {
                    dir: false,
                    rel: "2024/a.jpg".into(),
                    size: 1234,
                },
            ],
        };
        let w = o.encode();
        assert_eq!(Offer::read(&mut &w[..]).await.unwrap(), o);
        assert_eq!(o.total(), Some(1234));
        assert!(Offer::read(&mut &w[..w.len() - 1]).await.is_err());
        let mut bad = w.clone();
        bad[4] = 9;
        assert!(Offer::read(&mut &bad[..]).await.is_err());
        let file_of_two = Offer {
            kind: Kind::File,
            ..o.clone()
        };
        let e = Offer::read(&mut &file_of_two.encode()[..])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("2 entries"), "{e}");
        let h = Have {
            complete: true,
            len: 7,
            hash: [3; 32],
        };
        let mut v = Vec::new();
        h.encode(&mut v);
        assert_eq!(Have::decode(&v.try_into().unwrap()), h);
    }
}
