//! The listener: accepts clients, enforces the client limit, and hands each
//! connection to a worker, where its session runs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tracing::{error, info, warn};

use crate::config::Config;
use crate::session::Session;
use crate::state::Shared;
use crate::workers::Executors;

/// A running proxy.
pub struct Server {
    pub shared: Arc<Shared>,
    listener: TcpListener,
    /// Where sessions run: the worker runtimes, or this runtime if none.
    executors: Executors,
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
        let listener = TcpListener::bind(&addr).await?;
        let shared = Shared::new(config, executors.clone());
        Ok(Server {
            shared,
            listener,
            executors,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts clients forever.
    pub async fn run(self) {
        let topo = self.shared.topology.load_full();
        info!(
            listen = %self.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            shards = topo.shards.len(),
            slots = topo.ring.slots(),
            epoch = topo.epoch,
            "shardis listening"
        );
        drop(topo);
        let mut next_worker = 0usize;
        loop {
            let (mut sock, peer) = match self.listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let shared = self.shared.clone();
            shared.stats.connections.fetch_add(1, Ordering::Relaxed);
            let max = shared.topology.load().config.limits.max_clients;
            if shared.stats.clients.fetch_add(1, Ordering::AcqRel) >= max {
                shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
                shared.stats.rejected.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(async move {
                    let _ = sock.write_all(b"-ERR max number of clients reached\r\n").await;
                });
                continue;
            }
            let _ = sock.set_nodelay(true);
            let id = shared.next_client_id();
            let laddr = sock.local_addr().map(|a| a.to_string()).unwrap_or_default();
            if self.executors.is_empty() {
                tokio::spawn(async move {
                    let session = Session::new(shared.clone(), id, peer.to_string(), laddr);
                    session.run(sock).await;
                    shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
                });
                continue;
            }
            // Hand the socket to the next worker (round robin): it leaves this
            // runtime's reactor here and joins the worker's in the task, where
            // the session then lives for good.
            let std_sock = match sock.into_std() {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "cannot hand a client to a worker");
                    shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
                    continue;
                }
            };
            next_worker = next_worker.wrapping_add(1);
            self.executors.spawn_on(next_worker, async move {
                match TcpStream::from_std(std_sock) {
                    Ok(sock) => {
                        let session = Session::new(shared.clone(), id, peer.to_string(), laddr);
                        session.run(sock).await;
                    }
                    Err(e) => warn!(error = %e, "a worker cannot take a client"),
                }
                shared.stats.clients.fetch_sub(1, Ordering::AcqRel);
            });
        }
    }
}
