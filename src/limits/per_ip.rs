//! Connection limits per source address, checked at accept:
//! `limits.max_connections_per_second_per_ip` (a token bucket per address:
//! that many new connections a second, bursts of as many) and
//! `limits.max_clients_per_ip` (connections open at once). IPv6 sources are
//! counted per /64, the block one host usually holds; IPv4-mapped IPv6
//! addresses as their IPv4 address.
//!
//! One mutex-guarded map, touched only when a limit is on: one lock and one
//! hash lookup per accepted connection (and one per closed connection with
//! `max_clients_per_ip`). The map is bounded: past [`MAX_IPS`] addresses,
//! those with no connection open are forgotten (a forgotten address starts
//! again with a full bucket).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

/// Addresses remembered at most (beyond those with connections open).
pub const MAX_IPS: usize = 65_536;

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Over `max_connections_per_second_per_ip`.
    Rate,
    /// Over `max_clients_per_ip`.
    Clients,
}

impl Refused {
    /// The error line the client gets before the connection is closed, in
    /// the style of Redis's `-ERR max number of clients reached`.
    pub fn reply(self) -> &'static [u8] {
        match self {
            Refused::Rate => b"-ERR max connections per second from this address reached\r\n",
            Refused::Clients => b"-ERR max number of clients from this address reached\r\n",
        }
    }
}

#[derive(Debug)]
struct Source {
    tokens: f64,
    last: Instant,
    /// Connections open now that were counted (`max_clients_per_ip` on).
    clients: usize,
}

/// The limits' state (see the module doc).
#[derive(Debug, Default)]
pub struct PerIp {
    map: Mutex<HashMap<IpAddr, Source>>,
}

/// The address a source is counted under.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// A connection counted against `max_clients_per_ip`; uncounts it when
/// dropped (the session ended).
#[derive(Debug)]
pub struct IpSlot {
    limits: Arc<super::Limits>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.limits.per_ip.release(self.ip);
    }
}

impl PerIp {
    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, Source>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection from `ip` at `now`, or says why not. `rate`: new
    /// connections a second (0: no limit); `max_clients`: open at once (0:
    /// no limit). `Ok(true)`: it was counted as open (release it with
    /// [`PerIp::release`]).
    pub fn admit(&self, ip: IpAddr, now: Instant, rate: u32, max_clients: usize) -> Result<bool, Refused> {
        let ip = key(ip);
        let mut map = self.lock();
        if map.len() >= MAX_IPS && !map.contains_key(&ip) {
            map.retain(|_, s| s.clients > 0);
        }
        let burst = f64::from(rate.max(1));
        let s = map.entry(ip).or_insert(Source {
            tokens: burst,
            last: now,
            clients: 0,
        });
        if rate > 0 {
            let dt = now.saturating_duration_since(s.last).as_secs_f64();
            s.tokens = (s.tokens + dt * f64::from(rate)).min(burst);
            s.last = now;
            if s.tokens < 1.0 {
                return Err(Refused::Rate);
            }
        }
        if max_clients > 0 && s.clients >= max_clients {
            return Err(Refused::Clients);
        }
        if rate > 0 {
            s.tokens -= 1.0;
        }
        if max_clients > 0 {
            s.clients += 1;
        }
        Ok(max_clients > 0)
    }

    /// A connection counted by [`PerIp::admit`] closed.
    pub fn release(&self, ip: IpAddr) {
        let mut map = self.lock();
        if let Some(s) = map.get_mut(&key(ip)) {
            s.clients = s.clients.saturating_sub(1);
        }
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl super::Limits {
    /// [`PerIp::admit`] with a guard that releases the connection when
    /// dropped (`None` when it was not counted).
    pub fn admit_ip(self: &Arc<Self>, ip: IpAddr, rate: u32, max_clients: usize) -> Result<Option<IpSlot>, Refused> {
        let counted = self.per_ip.admit(ip, Instant::now(), rate, max_clients)?;
        Ok(counted.then(|| IpSlot {
            limits: self.clone(),
            ip,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rate_is_a_token_bucket_per_address() {
        let p = PerIp::default();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(p.admit(ip("10.0.0.1"), t0, 5, 0), Ok(false));
        }
        assert_eq!(p.admit(ip("10.0.0.1"), t0, 5, 0), Err(Refused::Rate));
        // Another address has its own bucket.
        assert_eq!(p.admit(ip("10.0.0.2"), t0, 5, 0), Ok(false));
        // 200 ms later: one token back (5 a second).
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(p.admit(ip("10.0.0.1"), t1, 5, 0), Ok(false));
        assert_eq!(p.admit(ip("10.0.0.1"), t1, 5, 0), Err(Refused::Rate));
        // Refused attempts take no token: a second later the bucket is full.
        let t2 = t1 + Duration::from_secs(1);
        for _ in 0..5 {
            assert!(p.admit(ip("10.0.0.1"), t2, 5, 0).is_ok());
        }
        assert!(p.admit(ip("10.0.0.1"), t2, 5, 0).is_err());
    }

    #[test]
    fn open_clients_are_capped_and_released() {
        let p = PerIp::default();
        let t = Instant::now();
        assert_eq!(p.admit(ip("10.0.0.1"), t, 0, 2), Ok(true));
        assert_eq!(p.admit(ip("10.0.0.1"), t, 0, 2), Ok(true));
        assert_eq!(p.admit(ip("10.0.0.1"), t, 0, 2), Err(Refused::Clients));
        p.release(ip("10.0.0.1"));
        assert_eq!(p.admit(ip("10.0.0.1"), t, 0, 2), Ok(true));
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_v4_as_v4() {
        assert_eq!(key(ip("2001:db8:1:2:aaaa::1")), key(ip("2001:db8:1:2:bbbb::2")));
        assert_ne!(key(ip("2001:db8:1:2::1")), key(ip("2001:db8:1:3::1")));
        assert_eq!(key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
    }

    #[test]
    fn the_map_stays_bounded() {
        let p = PerIp::default();
        let t = Instant::now();
        // One address with a connection open survives the eviction.
        assert_eq!(p.admit(ip("10.255.255.255"), t, 0, 10), Ok(true));
        for i in 0..(MAX_IPS as u32 + 10) {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(i));
            let _ = p.admit(a, t, 100, 0);
        }
        assert!(p.len() <= MAX_IPS);
        assert_eq!(p.admit(ip("10.255.255.255"), t, 0, 1), Err(Refused::Clients));
    }
}
