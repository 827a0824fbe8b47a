//! The listener: accepts clients, enforces the client limit and the limits
//! per source address ([`crate::limits::per_ip`]), and hands each
//! connection to a worker, where its session runs; at shutdown, stops
//! accepting and waits for the sessions to drain ([`drain`]).
//!
//! The listening socket has `SO_REUSEPORT` (and `SO_REUSEADDR`): a second
//! shardis on the same host can bind the same address while the first still
//! runs, the kernel spreads new connections over both, and once the first
//! closes its listener (SIGTERM) they all go to the second. That is a
//! rolling restart on one host with no refused connection (README).
//!
//! With `[admin] listen`, the admin HTTP endpoint ([`crate::admin`]) is
//! bound with the listener and served on this (the main) runtime.
//!
//! With `[tls]` the main listener is TLS only, or (with `tls.listen`) a
//! second listener is; a TLS client's handshake runs on its worker, with the
//! certificate of the topology in service at accept time (a reload that
//! read new files changes it for new connections only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::limits::per_ip::Refused;
use crate::session::Session;
use crate::state::Shared;
use crate::tls::rustls::ServerConfig;
use crate::workers::Executors;

/// A running proxy.
pub struct Server {
    pub shared: Arc<Shared>,
    listener: TcpListener,
    /// The main listener is TLS only (`[tls]` without `tls.listen`).
    tls_main: bool,
    /// `tls.listen`: a TLS listener next to the plain one.
    tls_listener: Option<TcpListener>,
    /// Where sessions run: the worker runtimes, or this runtime if none.
    executors: Executors,
    /// The admin HTTP endpoint's listener (`[admin] listen`), served by
    /// [`Server::run`] on this runtime.
    admin: Option<TcpListener>,
}

impl Server {
    /// Binds the listen address (`listen` overrides the config's) and starts
    /// the backend pools, sessions and pools all on the current runtime.
    pub async fn bind(config: Config, listen: Option<&str>) -> std::io::Result<Server> {
        Server::bind_on(config, listen, Executors::current()).await
    }

    /// As [`Server::bind`], with sessions and backend connections on the
    /// given worker runtimes (thread per core, see [`crate::workers`]); the
    /// listener stays on the current runtime.
    pub async fn bind_on(config: Config, listen: Option<&str>, executors: Executors) -> std::io::Result<Server> {
        let addr = listen.unwrap_or(&config.listen).to_string();
        let listener = bind_reuseport(&addr).await?;
        let tls_listener = match &config.tls.listen {
            Some(a) if config.tls.serves_clients() => Some(
                bind_reuseport(a)
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("tls.listen {a}: {e}")))?,
            ),
            _ => None,
        };
        let tls_main = config.tls.serves_clients() && tls_listener.is_none();
        let admin = match &config.admin.listen {
            Some(a) => Some(
                crate::admin::bind(a)
                    .await
                    .map_err(|e| std::io::Error::new(e.kind(), format!("admin endpoint {a}: {e}")))?,
            ),
            None => None,
        };
        let shared = Shared::new(config, executors.clone());
        // Follows Sentinel failovers and replicas' lag (idle without them).
        crate::failover::spawn(&shared);
        Ok(Server {
            shared,
            listener,
            tls_main,
            tls_listener,
            executors,
            admin,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where TLS clients connect, if TLS is on: the main address (TLS
    /// only) or `tls.listen`.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        match &self.tls_listener {
            Some(l) => l.local_addr().ok(),
            None if self.tls_main => self.listener.local_addr().ok(),
            None => None,
        }
    }

    /// Where the admin HTTP endpoint listens, if it is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Accepts clients until the shutdown starts (`shared.shutdown`, see
    /// [`crate::shutdown`]); then takes the connections already waiting in
    /// the accept queue (they would be reset when the listener closes),
    /// closes the listener, tells the sessions to drain and returns. Wait
    /// for them with [`drain`].
    pub async fn run(mut self) {
        let topo = self.shared.topology.load_full();
        info!(
            listen = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = %self.tls_addr().map(|a| a.to_string()).unwrap_or_else(|| "off".into()),
            shards = topo.shards.len(),
            slots = topo.ring.slots(),
            epoch = topo.epoch,
            "shardis listening"
        );
        drop(topo);
        if let Some(admin) = self.admin.take() {
            tokio::spawn(crate::admin::serve(self.shared.clone(), admin));
        }
        tokio::spawn(close_idle(self.shared.clone()));
        self.shared.stats.listening.store(true, Ordering::Release);
        let mut next_worker = 0usize;
        {
            let stop = self.shared.shutdown.wait();
            tokio::pin!(stop);
            loop {
                let (accepted, tls) = tokio::select! {
                    biased;
                    _ = &mut stop => break,
                    a = self.listener.accept() => (a, self.tls_main),
                    a = accept_on(self.tls_listener.as_ref()), if self.tls_listener.is_some() => (a, true),
                };
                match accepted {
                    Ok((sock, peer)) => start_session(&self.shared, &self.executors, sock, peer, tls, &mut next_worker),
                    Err(e) => {
                        // Out of file descriptors and the like: back off, keep serving.
                        error!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        }
        // The reactor may not have seen every queued connection yet: take
        // them with plain non-blocking accepts until the queue is empty.
        self.shared.stats.listening.store(false, Ordering::Release);
        let Server {
            shared,
            listener,
            tls_main,
            tls_listener,
            executors,
            ..
        } = self;
        let mut taken = 0usize;
        let listeners = std::iter::once((listener, tls_main)).chain(tls_listener.map(|l| (l, true)));
        for (listener, tls) in listeners {
            taken += take_queued(&shared, &executors, listener, tls, &mut next_worker);
        }
        // Only now: a client closed at once and reconnecting goes to
        // another process on this port, not into the queue just closed.
        drain_sessions(&shared);
        info!(
            queued = taken,
            clients = shared.stats.clients.load(Ordering::Acquire),
            "listener closed; clients draining"
        );
    }
}

/// Takes the connections still queued on a listener that stops accepting
/// (plain non-blocking accepts until the queue is empty), starts their
/// sessions and closes the listener. Returns how many it took.
fn take_queued(
    shared: &Arc<Shared>,
    executors: &Executors,
    listener: TcpListener,
    tls: bool,
    next_worker: &mut usize,
) -> usize {
    let listener = match listener.into_std() {
        Ok(l) => l,
        Err(e) => {
            warn!(error = %e, "cannot take the last queued clients; closing the listener");
            return 0;
        }
    };
    let mut taken = 0usize;
    loop {
        match listener.accept() {
            Ok((sock, peer)) => match sock.set_nonblocking(true).and_then(|()| TcpStream::from_std(sock)) {
                Ok(sock) => {
                    taken += 1;
                    start_session(shared, executors, sock, peer, tls, next_worker);
                }
                Err(e) => warn!(error = %e, "cannot serve a queued client"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!(error = %e, "accept failed while closing the listener");
                break;
            }
        }
    }
    taken
}

/// The next connection on `listener`; never resolves without one.
async fn accept_on(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

/// Longest a TLS client may take over its handshake before it is closed.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Serves one client to the end: the TLS handshake first if `tls`, then its
/// session; then uncounts it.
async fn serve(
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    laddr: String,
    sock: TcpStream,
    tls: Option<Arc<ServerConfig>>,
) {
    match tls {
        None => {
            Session::new(shared.clone(), id, peer.to_string(), laddr)
                .run(sock)
                .await
        }
        // Boxed: a plain client's task does not grow by the TLS state.
        Some(cfg) => Box::pin(serve_tls(shared.clone(), id, peer, laddr, sock, cfg)).await,
    }
    client_gone(&shared);
}

async fn serve_tls(
    shared: Arc<Shared>,
    id: u64,
    peer: SocketAddr,
    laddr: String,
    sock: TcpStream,
    cfg: Arc<ServerConfig>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
    match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(sock)).await {
        Ok(Ok(stream)) => Session::new(shared, id, peer.to_string(), laddr).run(stream).await,
        Ok(Err(e)) => debug!(client = %peer, error = %e, "TLS handshake failed"),
        Err(_) => debug!(client = %peer, "TLS handshake not done within {} s", TLS_HANDSHAKE.as_secs()),
    }
}

/// Counts the client against the limit and starts its session (after its
/// TLS handshake if `tls`), on the next worker (round robin) or on this
/// runtime.
fn start_session(
    shared: &Arc<Shared>,
    executors: &Executors,
    mut sock: TcpStream,
    peer: SocketAddr,
    tls: bool,
    next_worker: &mut usize,
) {
    let shared = shared.clone();
    shared.stats.connections.fetch_add(1, Ordering::Relaxed);
    let (rate, per_ip) = {
        let l = &shared.topology.load().config.limits;
        (l.max_connections_per_second_per_ip, l.max_clients_per_ip)
    };
    // Off (the default): not even a lookup. Held until the client leaves.
    let ip_slot = if rate > 0 || per_ip > 0 {
        match shared.limits.admit_ip(peer.ip(), rate, per_ip) {
            Ok(slot) => slot,
            Err(why) => {
                let counter = match why {
                    Refused::Rate => &shared.limits.ip_rate_refused,
                    Refused::Clients => &shared.limits.ip_clients_refused,
                };
                counter.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %peer, refused = ?why, "connection refused by a per-address limit");
                // A TLS client would not read a plaintext error: closed at once.
                if !tls {
                    refuse(sock, why.reply());
                }
                return;
            }
        }
    } else {
        None
    };
    let (max, tls) = {
        let topo = shared.topology.load();
        let tls = if tls {
            match &topo.config.tls.server.0 {
                Some(t) => Some(t.config.clone()),
                // Never: a reload keeps [tls] while TLS listeners exist.
                None => return,
            }
        } else {
            None
        };
        (topo.config.limits.max_clients, tls)
    };
    if shared.stats.clients.fetch_add(1, Ordering::AcqRel) >= max {
        shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
        shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
        // A TLS client would not read a plaintext error: closed at once.
        if tls.is_none() {
            tokio::spawn(async move {
                let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
            });
        }
        return;
    }
    let _ = sock.set_nodelay(true);
    let id = shared.next_client_id();
    let laddr = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
    if executors.is_empty() {
        tokio::spawn(async move {
            serve(shared, id, peer, laddr, sock, tls).await;
            drop(ip_slot);
        });
        return;
    }
    // Hand the socket to the next worker: it leaves this runtime's
    // reactor here and joins the worker's in the task, where the session
    // then lives for good.
    let std_sock = match sock.into_std() {
        Ok(s) => s,
        Err(e) => {
            warn!(error = %e, "cannot hand a client to a worker");
            client_gone(&shared);
            return;
        }
    };
    *next_worker = next_worker.wrapping_add(1);
    executors.spawn_on(*next_worker, async move {
        match TcpStream::from_std(std_sock) {
            Ok(sock) => serve(shared, id, peer, laddr, sock, tls).await,
            Err(e) => {
                warn!(error = %e, "a worker cannot take a client");
                client_gone(&shared);
            }
        }
        drop(ip_slot);
    });
}

/// Answers a refused connection with `reply` and closes it, with no task:
/// a flood of refused connections costs a write and a close each. The
/// socket is fresh, its send buffer empty: the line fits without waiting.
fn refuse(sock: TcpStream, reply: &[u8]) {
    if let Ok(mut s) = sock.into_std() {
        let _ = std::io::Write::write(&mut s, reply);
    }
}

/// A client counted at accept has gone: uncounts it, and tells a waiting
/// [`drain`].
fn client_gone(shared: &Shared) {
    shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
    shared.shutdown.session_ended();
}

/// Connections the kernel queues for us before we accept them. Above tokio's
/// default (128): after a restart or a network blip, every client of the
/// fleet may reconnect at once. The kernel caps it at `net.core.somaxconn`.
const BACKLOG: u32 = 1024;

/// Listens on `addr` (`host:port`, the first address it resolves to that
/// binds) with `SO_REUSEADDR` and `SO_REUSEPORT`, so a new shardis can bind
/// the same port while this one still runs (rolling restart).
async fn bind_reuseport(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let sock = if a.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let bound = sock
            .set_reuseaddr(true)
            .and_then(|()| sock.set_reuseport(true))
            .and_then(|()| sock.bind(a))
            .and_then(|()| sock.listen(BACKLOG));
        match bound {
            Ok(l) => {
                #[cfg(target_os = "linux")]
                if let Err(e) = steer_to_newest(&l) {
                    warn!(error = %e, "cannot steer new connections to the newest process on this port");
                }
                return Ok(l);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{addr} resolves to no address"),
        )
    }))
}

/// Makes the port's `SO_REUSEPORT` group give every new connection to its
/// second socket, when it has two: a classic BPF program that answers "1"
/// (with one socket, 1 is out of range and the kernel picks by hash as
/// usual). The group's sockets are in the order they joined, so during a
/// rolling restart the new process takes every new connection as soon as it
/// listens, and the old one's accept queue empties before SIGTERM closes it.
/// Without it the kernel would spread connections over both, and any still
/// queued at the old listener when it closes would be reset (unless
/// `net.ipv4.tcp_migrate_req` is on): measured here, one reset in about 25
/// restarts under 1,000 connections a second.
#[cfg(target_os = "linux")]
fn steer_to_newest(listener: &TcpListener) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let mut program = [libc::sock_filter {
        code: (libc::BPF_RET | libc::BPF_K) as u16,
        jt: 0,
        jf: 0,
        k: 1,
    }];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: the fd is our listening socket, alive for the call; `fprog`
    // and the program it points to outlive the call, which copies them.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// When a shutdown that started now (or already has) must be over: the
/// configuration's `shutdown_ms` after it started.
pub fn shutdown_deadline(shared: &Shared) -> Instant {
    let limit = shared.topology.load().config.shutdown();
    shared.shutdown.deadline(limit)
}

/// After [`Server::run`] returned: runs the shutdown hooks and waits until
/// every client session has ended or `deadline` has passed, whichever comes
/// first. Returns how many clients were still connected at the end (0 when
/// they all drained); the caller then exits, which closes them.
pub async fn drain(shared: &Shared, deadline: Instant) -> usize {
    let started = Instant::now();
    // Done already by Server::run, unless the caller has no listener.
    drain_sessions(shared);
    let clients = || shared.stats.clients.load(Ordering::Acquire);
    let sessions = async {
        while clients() > 0 {
            let next = shared.shutdown.next_session_end(|| clients() == 0);
            if tokio::time::timeout_at(deadline.into(), next).await.is_err() {
                break;
            }
        }
    };
    tokio::join!(shared.shutdown.run_hooks(deadline), sessions);
    let left = clients();
    if left == 0 {
        info!(ms = started.elapsed().as_millis() as u64, "every client drained");
    } else {
        warn!(
            clients = left,
            "shutdown deadline reached: closing the clients still connected"
        );
    }
    left
}

/// Tells every client session to drain (see [`Shutdown::drain_sessions`]):
/// the flag first, so a session registering after the DRAIN bits were
/// raised sees it when it starts.
///
/// [`Shutdown::drain_sessions`]: crate::shutdown::Shutdown::drain_sessions
pub fn drain_sessions(shared: &Shared) {
    if shared.shutdown.drain_sessions() {
        shared.clients.raise_all(crate::registry::signal::DRAIN);
    }
}

/// Closes, once a second, the clients idle for longer than the
/// configuration's `limits.client_idle_timeout_s` (read each time, so a
/// reload applies), as Redis's `timeout` does: not blocked clients,
/// subscribers or monitors. It reads the idle time each session stores on
/// every read, so the request path pays nothing for it. Ends with the
/// shutdown.
async fn close_idle(shared: Arc<Shared>) {
    use crate::registry::{flag, idle_past};
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shared.shutdown.wait() => return,
        }
        let limit = shared.topology.load().config.limits.client_idle_timeout_s;
        if limit == 0 {
            continue;
        }
        let now = std::time::Instant::now();
        let spared = flag::BLOCKED | flag::PUBSUB | flag::MONITOR;
        let (n, _) = shared
            .clients
            .kill(0, |e| e.flags() & spared == 0 && idle_past(e, now, limit));
        if n > 0 {
            shared.stats.idle_closed.fetch_add(n as u64, Ordering::Relaxed);
            tracing::debug!(clients = n, limit_s = limit, "closed idle clients");
        }
    }
}
