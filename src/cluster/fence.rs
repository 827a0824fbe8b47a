//! Fencing proxies at the backends (`[cluster] fence = true`).
//!
//! Each proxy talks to the shards as its own ACL user,
//! `shardis-proxy-<id>`, with a random password kept in its member record
//! in etcd. The user is created (or re-enabled) with the credentials the
//! fleet's spec gives for each backend, which must be allowed to run
//! `ACL SETUSER`. `ctl evict` disables the user and kills its connections
//! on every shard before the evicted proxy is removed, so a proxy that was
//! only paused gets errors from the shards when it wakes, never a write on
//! a topology the fleet has left behind.
//!
//! Without ACL rights (or without fencing) eviction only removes the member
//! record: a paused proxy that wakes may write with its old topology until
//! it reads etcd again (README, "Fleet").

use bytes::Bytes;

use crate::backend::{BackendSpec, one_shot};
use crate::config::{Backend, FleetSpec};
use crate::protocol::Request;
use crate::protocol::reply;

/// A proxy's ACL identity on the shards.
#[derive(Debug, Clone)]
pub struct Fence {
    pub user: String,
    pub password: String,
}

impl Fence {
    /// A new identity for proxy `id`, with a fresh random password.
    pub fn new(id: &str) -> Fence {
        Fence {
            user: user_of(id),
            password: random_hex(16),
        }
    }

    /// Creates or re-enables this proxy's user on every shard of `spec`.
    pub async fn enable(&self, spec: &FleetSpec) -> Result<(), String> {
        let pw = format!(">{}", self.password);
        let args: [&str; 9] = ["ACL", "SETUSER", &self.user, "reset", "on", &pw, "~*", "&*", "+@all"];
        for b in &spec.backends {
            call(b, &args)
                .await
                .map_err(|e| format!("fencing: cannot create ACL user {} on shard {}: {e}", self.user, b.name))?;
        }
        Ok(())
    }
}

/// The ACL user of proxy `id` (no spaces; ACL names allow the rest).
pub fn user_of(id: &str) -> String {
    let clean: String = id.chars().map(|c| if c.is_ascii_graphic() { c } else { '_' }).collect();
    format!("shardis-proxy-{clean}")
}

/// Disables `user` and kills its connections on `b`.
pub async fn disable(b: &Backend, user: &str) -> Result<(), String> {
    call(b, &["ACL", "SETUSER", user, "off"]).await?;
    call(b, &["CLIENT", "KILL", "USER", user]).await.or_else(|e| {
        // No connection of that user left: nothing to kill.
        if e.contains("No such") {
            Ok(Bytes::new())
        } else {
            Err(e)
        }
    })?;
    Ok(())
}

/// One administrative command on `b` with the spec's credentials.
async fn call(b: &Backend, args: &[&str]) -> Result<Bytes, String> {
    let spec = BackendSpec {
        username: b.username.clone(),
        password: b.password.clone(),
        ..BackendSpec::plain(&b.name, &b.addr)
    };
    let req = Request::from_args(args);
    let r = one_shot(&spec, &req.raw).await.map_err(|e| e.to_string())?;
    if reply::is_error(&r) {
        return Err(String::from_utf8_lossy(r.get(1..).unwrap_or_default())
            .trim_end()
            .to_string());
    }
    Ok(r)
}

/// `n` random bytes from the OS, hex-encoded.
fn random_hex(n: usize) -> String {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    let ok = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if ok.is_err() {
        // No /dev/urandom: time and pid through xxh3, still unguessable
        // enough to tell proxies apart, and logged as such.
        tracing::warn!("no /dev/urandom: the fence password is derived from the clock");
        let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
        let h = xxhash_rust::xxh3::xxh3_128(seed.as_bytes()).to_le_bytes();
        buf.iter_mut().zip(h.iter().cycle()).for_each(|(b, h)| *b = *h);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_and_passwords() {
        assert_eq!(user_of("host-a:6380"), "shardis-proxy-host-a:6380");
        assert_eq!(user_of("a b"), "shardis-proxy-a_b");
        let (a, b) = (Fence::new("x"), Fence::new("x"));
        assert_eq!(a.password.len(), 32);
        assert_ne!(a.password, b.password);
    }
}
