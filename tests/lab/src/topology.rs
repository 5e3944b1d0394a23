//! Topologies: which sites a lab has, each behind which kind of NAT.

use serde::Serialize;

use crate::error::{LabError, Result};
use crate::nat::NatKind;

/// One site: a host behind a NAT (or none) of a given kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SiteSpec {
    /// Short unique name (letters, digits, dashes; at most 8 characters),
    /// part of the namespace names.
    pub name: String,
    /// What stands between the host and the internet.
    pub kind: NatKind,
    /// Whether the (home) NAT hairpins.
    pub hairpin: bool,
}

impl SiteSpec {
    /// A site named `name` of `kind`.
    pub fn new(name: impl Into<String>, kind: NatKind, hairpin: bool) -> SiteSpec {
        SiteSpec {
            name: name.into(),
            kind,
            hairpin,
        }
    }
}

/// The sites of a lab. Every lab also has the internet namespace with the
/// STUN server and the TURN relay.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TopologySpec {
    /// The sites, in order.
    pub sites: Vec<SiteSpec>,
}

impl TopologySpec {
    /// One site per kind, named by the kind's short tag, hairpinning as
    /// given.
    pub fn one_of_each(kinds: &[NatKind], hairpin: bool) -> TopologySpec {
        TopologySpec {
            sites: kinds
                .iter()
                .map(|&k| SiteSpec::new(k.short(), k, hairpin))
                .collect(),
        }
    }

    /// Two sites per kind (`<tag>a` and `<tag>b`), so each pair of kinds,
    /// the same kind twice included, has one peer in each of two different
    /// sites: what the connection matrix needs.
    pub fn pairs(kinds: &[NatKind]) -> TopologySpec {
        TopologySpec {
            sites: kinds
                .iter()
                .flat_map(|&k| {
                    [
                        SiteSpec::new(format!("{}a", k.short()), k, false),
                        SiteSpec::new(format!("{}b", k.short()), k, false),
                    ]
                })
                .collect(),
        }
    }

    /// Every kind, with hairpinning on and off for the NATs where it can be
    /// told apart: the lab `natkit-lab up` builds by default.
    pub fn everything() -> TopologySpec {
        let mut t = TopologySpec::default();
        for k in NatKind::ALL {
            t.sites.push(SiteSpec::new(k.short(), k, false));
            if matches!(
                k,
                NatKind::FullCone
                    | NatKind::RestrictedCone
                    | NatKind::PortRestrictedCone
                    | NatKind::Symmetric
            ) {
                t.sites
                    .push(SiteSpec::new(format!("{}-hp", k.short()), k, true));
            }
        }
        t
    }

    /// Check names are unique and short.
    pub fn validate(&self) -> Result<()> {
        for (i, s) in self.sites.iter().enumerate() {
            let ok = !s.name.is_empty()
                && s.name.len() <= 8
                && s.name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(LabError::Topology(format!(
                    "site name {:?}: use 1-8 lowercase letters, digits or dashes",
                    s.name
                )));
            }
            if self.sites[..i].iter().any(|o| o.name == s.name) {
                return Err(LabError::Topology(format!("two sites named {:?}", s.name)));
            }
        }
        Ok(())
    }
}
