//! What the proxy knows of one client connection: its id and addresses,
//! protocol, name and library (HELLO, CLIENT SETNAME/SETINFO), whether it
//! authenticated and as which user ([`crate::acl`]); CLIENT REPLY's mode; and
//! its entry in the registry of live sessions ([`crate::registry`]). Read by
//! the router and changed by local commands.

use std::sync::Arc;

use bytes::Bytes;

use crate::acl::User;
use crate::protocol::Protocol;
use crate::registry::{Desc, Entry};

/// CLIENT REPLY: which replies the client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplyMode {
    #[default]
    On,
    /// No reply at all until CLIENT REPLY ON.
    Off,
    /// Set by CLIENT REPLY SKIP: the next command's reply is not sent.
    SkipNext,
}

/// Per-connection state that commands can read and change (HELLO, CLIENT
/// SETNAME, AUTH, ...).
#[derive(Debug)]
pub struct ClientState {
    pub id: u64,
    pub proto: Protocol,
    pub name: Option<Bytes>,
    pub lib_name: Option<Bytes>,
    pub lib_ver: Option<Bytes>,
    pub authenticated: bool,
    /// The user this connection is (`default` until AUTH).
    pub user: Arc<User>,
    /// Gave `SHARDIS.ADMIN` the admin password (see `admin_password`): every
    /// command and key is allowed.
    pub admin: bool,
    pub addr: String,
    pub laddr: String,
    pub connected_at: std::time::Instant,
    pub reply: ReplyMode,
    /// This client in the registry of live sessions (CLIENT LIST / KILL).
    pub entry: Arc<Entry>,
    /// Its seat as the user it logged in as (`max_clients` per user, see
    /// [`crate::limits::seats`]); none until AUTH / HELLO AUTH.
    pub seat: Option<crate::limits::seats::Seat>,
}

impl ClientState {
    /// A client that just connected as `user` (the default user): RESP2,
    /// authenticated only when the default user needs no password.
    pub fn new(
        id: u64,
        addr: String,
        laddr: String,
        user: Arc<User>,
        needs_password: bool,
        entry: Arc<Entry>,
    ) -> ClientState {
        ClientState {
            id,
            proto: Protocol::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            authenticated: !needs_password,
            user,
            admin: false,
            addr,
            laddr,
            connected_at: std::time::Instant::now(),
            reply: ReplyMode::On,
            entry,
            seat: None,
        }
    }

    /// Whether the legacy admin gate (`admin_password`, SHARDIS.ADMIN) lets
    /// this client through: it gave the admin password, or its user is a
    /// configured one (whose permissions decide).
    pub fn admin_gate_open(&self) -> bool {
        self.admin || !self.user.gated
    }

    /// The permissions to check, `None` when everything is allowed.
    pub fn perms(&self) -> Option<&crate::acl::Perms> {
        (!self.admin && !self.user.unrestricted()).then_some(&self.user.perms)
    }

    /// Copies what other sessions read (CLIENT LIST) into the entry, after
    /// a command that may have changed it (HELLO, CLIENT SETNAME, RESET ...).
    pub fn publish(&self) {
        self.entry.set_desc(Desc {
            name: self.name.clone(),
            lib_name: self.lib_name.clone(),
            lib_ver: self.lib_ver.clone(),
            resp: if self.proto == Protocol::Resp3 { 3 } else { 2 },
            user: (self.user.name != "default").then(|| Bytes::copy_from_slice(self.user.name.as_bytes())),
        });
    }
}
