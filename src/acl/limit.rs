//! The rate limit on failed logins, per source IP: after [`MAX_FAILURES`]
//! failed AUTH / HELLO AUTH within [`WINDOW`] (counted from the first
//! failure), every further login from that IP is answered WRONGPASS without
//! the password being looked at, until the window ends. Nothing waits: other
//! clients, and this client's other commands, are served as usual.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(10);
/// IPs remembered at most; beyond, expired windows are dropped first, and
/// then the map is cleared (a flood of sources must not grow memory).
const MAX_IPS: usize = 65_536;

#[derive(Debug, Default)]
pub struct LoginLimit {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The IP of a `host:port` peer address; unparsable addresses (Unix
/// sockets) share one bucket.
pub fn ip_of(addr: &str) -> IpAddr {
    addr.parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

impl LoginLimit {
    /// Whether logins from `ip` are refused now.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let Ok(map) = self.failures.lock() else {
            return false;
        };
        map.get(&ip)
            .is_some_and(|&(start, n)| n >= MAX_FAILURES && now.duration_since(start) < WINDOW)
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let Ok(mut map) = self.failures.lock() else {
            return;
        };
        if map.len() >= MAX_IPS {
            map.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if map.len() >= MAX_IPS {
                map.clear();
            }
        }
        let e = map.entry(ip).or_insert((now, 0));
        if now.duration_since(e.0) >= WINDOW {
            *e = (now, 0);
        }
        e.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_max_failures_within_the_window() {
        let l = LoginLimit::default();
        let ip = ip_of("10.0.0.1:5000");
        let other = ip_of("10.0.0.2:5000");
        let t0 = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            l.failed(ip, t0);
        }
        assert!(!l.blocked(ip, t0));
        l.failed(ip, t0);
        assert!(l.blocked(ip, t0 + Duration::from_secs(1)));
        assert!(!l.blocked(other, t0));
        assert!(!l.blocked(ip, t0 + WINDOW));
        l.failed(ip, t0 + WINDOW);
        assert!(!l.blocked(ip, t0 + WINDOW));
    }

    #[test]
    fn addresses() {
        assert_eq!(ip_of("[::1]:6379"), "::1".parse::<IpAddr>().unwrap());
        assert_eq!(ip_of("garbage"), IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    }
}
