//! RFC 4787 NAT models for the simulations: mapping and filtering
//! behaviours, and a network change (new public address, mappings lost).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// RFC 4787 §4.1 mapping behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mapping {
    /// One external port per internal address, whatever the destination.
    EndpointIndependent,
    /// A new external port per (internal address, destination): "symmetric".
    AddressAndPortDependent,
}

/// RFC 4787 §5 filtering behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtering {
    /// Anyone may send to a mapping.
    EndpointIndependent,
    /// Only IPs the mapping has sent to.
    AddressDependent,
    /// Only exact addresses the mapping has sent to.
    AddressAndPortDependent,
}

struct Binding {
    internal: SocketAddr,
    /// Destination the binding is for (symmetric mapping only).
    dest: Option<SocketAddr>,
    external_port: u16,
    contacted: HashSet<SocketAddr>,
}

/// How a NAT picks the outside port of a new mapping.
pub enum Ports {
    /// The previous one's plus one (a sequential allocator).
    Sequential,
    /// Uniformly at random in 1024..=65535, as Linux's `masquerade
    /// random` does (seeded).
    Random(Box<StdRng>),
}

/// A NAT in front of one agent.
pub struct Nat {
    pub public_ip: IpAddr,
    pub mapping: Mapping,
    pub filtering: Filtering,
    next_port: u16,
    ports: Ports,
    bindings: Vec<Binding>,
}

impl Nat {
    pub fn new(public_ip: &str, mapping: Mapping, filtering: Filtering) -> Self {
        Nat {
            public_ip: public_ip.parse().unwrap(),
            mapping,
            filtering,
            next_port: 40000,
            ports: Ports::Sequential,
            bindings: Vec::new(),
        }
    }

    /// A symmetric NAT (address-and-port-dependent mapping and filtering)
    /// whose ports are random, from `seed`: Linux's `masquerade random`.
    pub fn symmetric_random(public_ip: &str, seed: u64) -> Self {
        Nat {
            ports: Ports::Random(Box::new(StdRng::seed_from_u64(seed))),
            ..Nat::new(
                public_ip,
                Mapping::AddressAndPortDependent,
                Filtering::AddressAndPortDependent,
            )
        }
    }

    /// The outside port of a new mapping: never one in use.
    fn new_port(&mut self) -> u16 {
        loop {
            let p = match &mut self.ports {
                Ports::Sequential => {
                    self.next_port += 1;
                    self.next_port
                }
                Ports::Random(rng) => rng.gen_range(1024..=65535),
            };
            if !self.bindings.iter().any(|b| b.external_port == p) {
                return p;
            }
        }
    }

    /// How many mappings it holds.
    pub fn mappings(&self) -> usize {
        self.bindings.len()
    }

    /// Translate an outgoing packet's source.
    pub fn outbound(&mut self, internal: SocketAddr, dest: SocketAddr) -> SocketAddr {
        let key = match self.mapping {
            Mapping::EndpointIndependent => None,
            Mapping::AddressAndPortDependent => Some(dest),
        };
        let i = match self
            .bindings
            .iter()
            .position(|b| b.internal == internal && b.dest == key)
        {
            Some(i) => i,
            None => {
                let external_port = self.new_port();
                self.bindings.push(Binding {
                    internal,
                    dest: key,
                    external_port,
                    contacted: HashSet::new(),
                });
                self.bindings.len() - 1
            }
        };
        self.bindings[i].contacted.insert(dest);
        SocketAddr::new(self.public_ip, self.bindings[i].external_port)
    }

    /// Translate an incoming packet's destination, if the filter lets it in.
    pub fn inbound(&self, external_port: u16, src: SocketAddr) -> Option<SocketAddr> {
        let b = self
            .bindings
            .iter()
            .find(|b| b.external_port == external_port)?;
        let ok = match self.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => b.contacted.iter().any(|c| c.ip() == src.ip()),
            Filtering::AddressAndPortDependent => b.contacted.contains(&src),
        };
        ok.then_some(b.internal)
    }

    /// A network change: the NAT now has the public address `public_ip`
    /// and has forgotten every mapping (a new uplink, or a NAT reboot).
    /// Packets to the old mappings are dropped; new ones get new ports.
    pub fn renumber(&mut self, public_ip: &str) {
        self.public_ip = public_ip.parse().unwrap();
        self.bindings.clear();
    }
}
