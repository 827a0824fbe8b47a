//! What the proxy knows of one client connection: its id and addresses,
//! protocol, name and library (HELLO, CLIENT SETNAME/SETINFO), and whether it
//! authenticated. Read by the router and changed by local commands.

use bytes::Bytes;

use crate::protocol::Protocol;

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
    /// Gave `SHARDIS.ADMIN` the admin password (see `admin_password`).
    pub admin: bool,
    pub addr: String,
    pub laddr: String,
    pub connected_at: std::time::Instant,
}

impl ClientState {
    /// A client that just connected: RESP2, authenticated only when no
    /// password is configured.
    pub fn new(id: u64, addr: String, laddr: String, needs_password: bool) -> ClientState {
        ClientState {
            id,
            proto: Protocol::Resp2,
            name: None,
            lib_name: None,
            lib_ver: None,
            authenticated: !needs_password,
            admin: false,
            addr,
            laddr,
            connected_at: std::time::Instant::now(),
        }
    }
}
