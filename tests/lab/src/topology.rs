//! Topologies: which sites a lab has, each behind which kind of NAT.

use serde::Serialize;

use crate::error::{LabError, Result};
use crate::link::LinkProfile;
use crate::nat::NatKind;
use crate::portmap::PortMapping;

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
    /// Latency, jitter and loss of the site's access link (between its
    /// outermost router and the internet).
    pub profile: LinkProfile,
    /// Whether the site's (home) NAT runs a port-mapping daemon.
    pub port_mapping: PortMapping,
    /// The UDP mapping lifetime of the site's NATs in seconds, when not
    /// conntrack's default (30 s unanswered, 120 s once answered).
    pub udp_timeout: Option<u32>,
}

impl SiteSpec {
    /// A site named `name` of `kind`, its link unshaped, no port mapping,
    /// default mapping lifetimes.
    pub fn new(name: impl Into<String>, kind: NatKind, hairpin: bool) -> SiteSpec {
        SiteSpec {
            name: name.into(),
            kind,
            hairpin,
            profile: LinkProfile::Unshaped,
            port_mapping: PortMapping::Off,
            udp_timeout: None,
        }
    }

    /// The same site with its access link shaped as `profile`.
    pub fn with_profile(mut self, profile: LinkProfile) -> SiteSpec {
        self.profile = profile;
        self
    }

    /// The same site with a port-mapping daemon as `pm` says. Only a site
    /// whose NAT can be opened that way takes one
    /// ([`NatKind::port_mapping_possible`]); [`TopologySpec::validate`]
    /// (and so [`crate::Lab::build`]) refuses the others.
    pub fn with_port_mapping(mut self, pm: PortMapping) -> SiteSpec {
        self.port_mapping = pm;
        self
    }

    /// The same site with a UDP mapping lifetime of `secs` seconds.
    pub fn with_udp_timeout(mut self, secs: u32) -> SiteSpec {
        self.udp_timeout = Some(secs);
        self
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

    /// Every site's access link shaped as `profile`.
    pub fn with_profile(mut self, profile: LinkProfile) -> TopologySpec {
        for s in &mut self.sites {
            s.profile = profile;
        }
        self
    }

    /// A port-mapping daemon as `pm` says on every site whose NAT it can
    /// open ([`NatKind::port_mapping_possible`]: not the public sites, not
    /// the double NAT).
    pub fn with_port_mapping(mut self, pm: PortMapping) -> TopologySpec {
        for s in &mut self.sites {
            if s.kind.port_mapping_possible() {
                s.port_mapping = pm;
            }
        }
        self
    }

    /// Check names are unique and short, and options fit the kinds.
    pub fn validate(&self) -> Result<()> {
        for (i, s) in self.sites.iter().enumerate() {
            if s.port_mapping != PortMapping::Off && !s.kind.port_mapping_possible() {
                let why = if s.kind.is_public() {
                    "has no NAT to map ports on"
                } else if !s.kind.udp_allowed() {
                    "blocks UDP by the network's policy, which no port mapping may open"
                } else {
                    "cannot map ports: a mapping on the home NAT leaves the carrier-grade \
                     NAT in front of it closed (miniupnpd finds that out and disables port \
                     forwarding); use port mapping on a single NAT"
                };
                return Err(LabError::Topology(format!(
                    "site {:?} ({}) {why}",
                    s.name, s.kind
                )));
            }
            if s.udp_timeout == Some(0) {
                return Err(LabError::Topology(format!(
                    "site {:?}: a UDP timeout of 0 s",
                    s.name
                )));
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_mapping_only_where_a_mapping_can_open_the_nat() {
        let spec = |kind| TopologySpec {
            sites: vec![SiteSpec::new("s", kind, false).with_port_mapping(PortMapping::On)],
        };
        let err = spec(NatKind::DoubleNat).validate().unwrap_err().to_string();
        assert!(
            err.contains("double-nat") && err.contains("carrier-grade"),
            "{err}"
        );
        let err = spec(NatKind::Open).validate().unwrap_err().to_string();
        assert!(err.contains("no NAT"), "{err}");
        spec(NatKind::Symmetric).validate().unwrap();
        // Refusing is a daemon too, and just as unable to open a CGN.
        let refuse = TopologySpec {
            sites: vec![SiteSpec::new("s", NatKind::DoubleNat, false)
                .with_port_mapping(PortMapping::Refuse)],
        };
        assert!(refuse.validate().is_err());

        // Applied to a whole topology, it skips the sites it cannot serve.
        let all =
            TopologySpec::one_of_each(&NatKind::ALL, false).with_port_mapping(PortMapping::On);
        all.validate().unwrap();
        for s in &all.sites {
            let want = s.kind.port_mapping_possible();
            assert_eq!(s.port_mapping == PortMapping::On, want, "{}", s.kind);
        }
        assert!(!NatKind::DoubleNat.port_mapping_possible());
        assert!(!NatKind::UdpBlocked.port_mapping_possible());
    }
}
