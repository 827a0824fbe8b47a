//! The proxy's admin commands on a session: `SHARDIS.ADMIN` (the router has
//! checked the password) and `SHARDIS.RELOAD`.

use super::Session;
use super::replies::At;
use crate::control;
use crate::error::ReplyError;
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
            // the new topology epoch, or why the file was refused. The file
            // is small and read on the session's thread; the new topology is
            // built and swapped in before the reply.
            Admin::Reload { force } => {
                let Some(path) = self.shared.config_path.get() else {
                    return self.replies.error(
                        at,
                        proto,
                        &ReplyError::err("shardis: this proxy was not started from a configuration file"),
                    );
                };
                match control::reload_forced(&self.shared, path, force) {
                    Ok(epoch) => self.replies.reply_with(at, proto, |e| e.integer(epoch as i64)),
                    Err(why) => self.replies.error(
                        at,
                        proto,
                        &ReplyError::err(format!("shardis: configuration refused, topology unchanged: {why}")),
                    ),
                }
            }
        }
    }
}
