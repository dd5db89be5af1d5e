//! Address allocation on the bridge network. Addresses are handed out
//! round-robin so a freed one is not reused at once (a stale ARP entry or a
//! lingering connection would otherwise reach the wrong container).

use std::collections::HashSet;
use std::net::Ipv4Addr;

#[derive(Debug)]
pub struct Ipam {
    network: u32,
    prefix_len: u8,
    gateway: Ipv4Addr,
    in_use: HashSet<Ipv4Addr>,
    next: u32,
}

impl Ipam {
    pub fn new(gateway: Ipv4Addr, prefix_len: u8) -> Self {
        let mask = if prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - prefix_len)
        };
        let network = u32::from(gateway) & mask;
        Self {
            network,
            prefix_len,
            gateway,
            in_use: HashSet::new(),
            next: 2,
        }
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix_len)
    }

    /// Marks an address as taken (re-adopted containers at daemon start).
    pub fn reserve(&mut self, ip: Ipv4Addr) {
        self.in_use.insert(ip);
    }

    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let size = self.size();
        // Host numbers 1..size-1, skipping the network and broadcast addresses.
        for _ in 0..size {
            let host = self.next;
            self.next = if self.next + 1 >= size - 1 {
                1
            } else {
                self.next + 1
            };
            if host == 0 || host >= size - 1 {
                continue;
            }
            let ip = Ipv4Addr::from(self.network | host);
            if ip != self.gateway && self.in_use.insert(ip) {
                return Some(ip);
            }
        }
        None
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.in_use.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_round_robin_and_exhausts() {
        let mut ipam = Ipam::new(Ipv4Addr::new(10, 1, 2, 1), 29); // hosts .1-.6, gateway .1
        let got: Vec<_> = (0..5).map(|_| ipam.allocate().unwrap()).collect();
        assert_eq!(got[0], Ipv4Addr::new(10, 1, 2, 2));
        assert_eq!(got[4], Ipv4Addr::new(10, 1, 2, 6));
        assert!(ipam.allocate().is_none());
        ipam.release(Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(ipam.allocate(), Some(Ipv4Addr::new(10, 1, 2, 3)));
    }

    #[test]
    fn reserved_addresses_are_skipped() {
        let mut ipam = Ipam::new(Ipv4Addr::new(10, 88, 0, 1), 16);
        ipam.reserve(Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!(ipam.allocate(), Some(Ipv4Addr::new(10, 88, 0, 3)));
    }
}
