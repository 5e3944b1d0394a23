//! RFC 4787 NAT models for the simulations: mapping and filtering
//! behaviours, and a network change (new public address, mappings lost).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

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

/// A NAT in front of one agent.
pub struct Nat {
    pub public_ip: IpAddr,
    pub mapping: Mapping,
    pub filtering: Filtering,
    next_port: u16,
    bindings: Vec<Binding>,
}

impl Nat {
    pub fn new(public_ip: &str, mapping: Mapping, filtering: Filtering) -> Self {
        Nat {
            public_ip: public_ip.parse().unwrap(),
            mapping,
            filtering,
            next_port: 40000,
            bindings: Vec::new(),
        }
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
                self.next_port += 1;
                self.bindings.push(Binding {
                    internal,
                    dest: key,
                    external_port: self.next_port,
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
