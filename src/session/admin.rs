//! The proxy's admin commands on a session: `SHARDIS.ADMIN` (the router has
//! checked the password) and `SHARDIS.RELOAD`.

use super::Session;
use bytes::BytesMut;

use super::replies::{At, Slot};
use crate::control;
use crate::error::ReplyError;
use crate::protocol::Encoder;
use crate::router::Admin;

impl Session {
    pub(super) fn admin(&mut self, cmd: Admin, at: At) {
        let proto = self.state.proto;
        match cmd {
            Admin::Login => {
                self.state.admin = true;
                self.replies.reply_with(at, proto, |e| e.ok());
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
