//! The proxy's admin commands on a session: `SHARDIS.ADMIN` (the router has
//! checked the password; failures count against the failed-login limit)
//! and `SHARDIS.RELOAD`.

use super::Session;
use bytes::BytesMut;

use super::replies::{At, Slot};
use crate::control;
use std::sync::atomic::Ordering;

use crate::acl::limit;
use crate::error::{ErrorKind, ReplyError};
use crate::protocol::Encoder;
use crate::router::Admin;

impl Session {
    pub(super) fn admin(&mut self, cmd: Admin, at: At) {
        let proto = self.state.proto;
        match cmd {
            // Counted and limited per source IP as AUTH is (crate::acl::limit).
            Admin::Login | Admin::BadPassword => {
                let ip = limit::ip_of(&self.state.addr);
                let now = std::time::Instant::now();
                let blocked = self.shared.logins.blocked(ip, now);
                if cmd == Admin::Login && !blocked {
                    self.state.admin = true;
                    return self.replies.reply_with(at, proto, |e| e.ok());
                }
                if !blocked {
                    self.shared.logins.failed(ip, now);
                }
                self.shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
                tracing::info!(addr = %self.state.addr, "failed SHARDIS.ADMIN");
                self.replies.error(
                    at,
                    proto,
                    &ReplyError::new(ErrorKind::WrongPass, "invalid admin password"),
                );
            }
            // Re-reads the configuration file, as SIGHUP does, and answers
            // the new topology epoch, or why the file was refused. A task
            // of its own does it (new shards are given the function
            // libraries first, which awaits them) and answers in the slot;
            // the new topology is in service before the reply.
            Admin::Reload { force } => {
                let Some(path) = self.shared.config_path.get() else {
                    return self.replies.error(
                        at,
                        proto,
                        &ReplyError::err("shardis: this proxy was not started from a configuration file"),
                    );
                };
                let (path, shared) = (path.clone(), self.shared.clone());
                let seq = self.replies.put(at, Slot::One(None));
                let reply = self.reply_to(seq, 0);
                tokio::spawn(async move {
                    let mut out = BytesMut::new();
                    let mut enc = Encoder::new(&mut out, proto);
                    match control::reload_forced(&shared, &path, force).await {
                        Ok(epoch) => enc.integer(epoch as i64),
                        Err(why) => {
                            ReplyError::err(format!("shardis: configuration refused, topology unchanged: {why}"))
                                .encode(&mut enc)
                        }
                    }
                    reply.complete(Ok(out.freeze()));
                });
            }
        }
    }
}
