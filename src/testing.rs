//! Test support (cargo feature `testing`): shardis and N Redis shards in Docker
//! containers on a private network, for your own testcontainers-based tests.
//!
//! Built on testcontainers 0.15 (`clients::Cli`, which drives the `docker`
//! CLI and so works with any engine version) and `GenericImage`. The images
//! are local ones, never pulled: `shardis/redis:local` and
//! `shardis/shardis:local` from shardis' `scripts/build-images.sh` (or any
//! images with the same layout, see [`ClusterBuilder::images`]).
//!
//! Every cluster gets its own user-defined network; shards are reached by
//! container name (which is their hostname on that network), shardis runs in
//! a container on the same network with its client port published on the
//! host. Dropping the [`Cluster`] removes the containers, the network and the
//! generated configuration, also when a test panics.
//!
//! ```no_run
//! use shardis::testing::Cluster;
//! use testcontainers::clients::Cli;
//!
//! let docker = Cli::default();
//! let cluster = Cluster::start(&docker, 3).expect("shardis cluster");
//! let client = redis::Client::open(cluster.proxy_url()).expect("url");
//! let mut con = client.get_connection().expect("connect to shardis");
//! redis::cmd("SET").arg("greeting").arg("hello").exec(&mut con).expect("SET");
//! // Which shard got the key, and a look at it from inside that shard:
//! let shard = cluster.shard_of("greeting");
//! assert_eq!(cluster.shard_cli(shard, &["GET", "greeting"]).expect("redis-cli"), "hello");
//! ```

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testcontainers::clients::Cli;
use testcontainers::core::WaitFor;
use testcontainers::{Container, GenericImage, RunnableImage};

use crate::config::Timeouts;
use crate::ring::Ring;

/// The Redis image `scripts/build-images.sh` builds.
pub const REDIS_IMAGE: &str = "shardis/redis:local";
/// The shardis image `scripts/build-images.sh` builds.
pub const SHARDIS_IMAGE: &str = "shardis/shardis:local";
/// Port shardis listens on inside its container.
pub const PROXY_PORT: u16 = 6380;
/// Port Redis listens on inside its containers.
pub const REDIS_PORT: u16 = 6379;

/// Something the docker CLI refused, or a cluster that did not come up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("docker {args}: {why}")]
    Docker { args: String, why: String },
    #[error("{0}")]
    Setup(String),
}

/// Runs `docker ARGS` and returns its trimmed stdout.
pub fn docker(args: &[&str]) -> Result<String, Error> {
    let fail = |why: String| Error::Docker {
        args: args.join(" "),
        why,
    };
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| fail(format!("cannot run the docker CLI: {e}")))?;
    if !out.status.success() {
        return Err(fail(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The engine's version and API version (`20.10.24+dfsg1 1.41`), or why the
/// engine cannot be reached. Use it to skip container tests on machines
/// without Docker.
pub fn docker_engine() -> Result<String, Error> {
    docker(&["version", "--format", "{{.Server.Version}} {{.Server.APIVersion}}"])
}

/// A name no other cluster of this or a concurrent run uses.
fn unique_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "shardis-{}-{}-{:x}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        nanos >> 8
    )
}

/// Splits `name:tag` (the tag defaults to `latest`).
fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// A user-defined Docker network, removed on drop.
#[derive(Debug)]
pub struct Network {
    name: String,
}

impl Network {
    /// Creates a bridge network named `name`.
    pub fn create(name: &str) -> Result<Network, Error> {
        docker(&["network", "create", "--driver", "bridge", name])?;
        Ok(Network { name: name.to_string() })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        if docker(&["network", "rm", &self.name]).is_ok() {
            return;
        }
        // Something is still attached (a container of the test's own, a
        // failed start): cut it off, then remove the network.
        let attached = docker(&[
            "network",
            "inspect",
            "--format",
            "{{range $id, $c := .Containers}}{{$id}} {{end}}",
            &self.name,
        ])
        .unwrap_or_default();
        for id in attached.split_whitespace() {
            let _ = docker(&["network", "disconnect", "--force", &self.name, id]);
        }
        if let Err(e) = docker(&["network", "rm", &self.name]) {
            eprintln!("shardis::testing: could not remove network {}: {e}", self.name);
        }
    }
}

/// A directory of generated files, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One Redis shard container.
pub struct Shard<'d> {
    /// The backend name in shardis' configuration (`shard-1` ...).
    pub name: String,
    /// The container's name: its hostname on the cluster's network.
    pub host: String,
    pub container: Container<'d, GenericImage>,
}

/// How to start a [`Cluster`]; [`Cluster::builder`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ClusterBuilder {
    shards: usize,
    redis_image: String,
    shardis_image: String,
    timeouts: Timeouts,
    extra_config: String,
}

impl ClusterBuilder {
    /// Number of Redis shards (at least 1).
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// The images (`name:tag`) to run. The Redis image must have
    /// `redis-server` as entrypoint (logging "Ready to accept connections")
    /// and `redis-cli` on its PATH; the shardis image must read
    /// `/etc/shardis/proxy.toml`.
    pub fn images(mut self, redis: &str, shardis: &str) -> Self {
        self.redis_image = redis.to_string();
        self.shardis_image = shardis.to_string();
        self
    }

    /// shardis' backend timeouts. The default is short (connect 300 ms,
    /// command 500 ms, reconnect 50..500 ms) so failure tests run quickly.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// TOML added to the generated configuration before the backends, e.g.
    /// `"[pool]\nconnections = 4\n"` or `password = "secret"`.
    pub fn extra_config(mut self, toml: &str) -> Self {
        self.extra_config = toml.to_string();
        self
    }

    /// Starts the network, the shards and shardis, and waits until each
    /// container is ready. Panics only where testcontainers itself does
    /// (a container that cannot be started).
    pub fn start(self, docker: &Cli) -> Result<Cluster<'_>, Error> {
        if self.shards == 0 {
            return Err(Error::Setup("a cluster needs at least one shard".into()));
        }
        let name = unique_name();
        let dir = TempDir(std::env::temp_dir().join(&name));
        std::fs::create_dir_all(&dir.0).map_err(|e| Error::Setup(format!("{}: {e}", dir.0.display())))?;
        let network = Network::create(&name)?;

        let (redis_name, redis_tag) = split_image(&self.redis_image);
        let mut shards = Vec::with_capacity(self.shards);
        for i in 1..=self.shards {
            let host = format!("{name}-redis-{i}");
            let image = GenericImage::new(redis_name.clone(), redis_tag.clone())
                .with_wait_for(WaitFor::message_on_stdout("Ready to accept connections"));
            let runnable = RunnableImage::from((image, Vec::new()))
                .with_network(name.clone())
                .with_container_name(host.clone());
            let container = docker.run(runnable);
            shards.push(Shard {
                name: format!("shard-{i}"),
                host,
                container,
            });
        }

        let t = &self.timeouts;
        let mut config = format!(
            "# Generated by shardis::testing for network {name}.\n\
             listen = \"0.0.0.0:{PROXY_PORT}\"\n{}\n\
             [timeouts]\nconnect_ms = {}\ncommand_ms = {}\nreconnect_ms = {}\nreconnect_max_ms = {}\n",
            self.extra_config, t.connect_ms, t.command_ms, t.reconnect_ms, t.reconnect_max_ms
        );
        for s in &shards {
            config.push_str(&format!(
                "\n[[backends]]\nname = \"{}\"\naddr = \"{}:{REDIS_PORT}\"\n",
                s.name, s.host
            ));
        }
        let parsed = crate::config::Config::parse(&config)
            .map_err(|e| Error::Setup(format!("generated configuration is invalid: {e}\n{config}")))?;
        let ring = Ring::for_config(&parsed);
        let config_path = dir.0.join("proxy.toml");
        std::fs::write(&config_path, &config).map_err(|e| Error::Setup(format!("{}: {e}", config_path.display())))?;

        let (shardis_name, shardis_tag) = split_image(&self.shardis_image);
        let image = GenericImage::new(shardis_name, shardis_tag)
            .with_volume(
                config_path.display().to_string(),
                "/etc/shardis/proxy.toml:ro".to_string(),
            )
            .with_exposed_port(PROXY_PORT)
            .with_wait_for(WaitFor::message_on_stderr("shardis listening"));
        let runnable = RunnableImage::from((image, Vec::new()))
            .with_network(name.clone())
            .with_container_name(format!("{name}-shardis"));
        let proxy = docker.run(runnable);
        let port = proxy.get_host_port_ipv4(PROXY_PORT);
        let proxy_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        crate::testkit::ping_within(proxy_addr, Duration::from_secs(10))
            .map_err(|e| Error::Setup(format!("shardis at {proxy_addr} did not answer PING: {e}")))?;

        Ok(Cluster {
            proxy,
            proxy_addr,
            shards,
            ring,
            config,
            network,
            _dir: dir,
        })
    }
}

/// shardis in a container in front of N Redis shard containers, all on one
/// private network. Dropped: containers first, then the network.
pub struct Cluster<'d> {
    // Field order is drop order: containers, then the network they use.
    proxy: Container<'d, GenericImage>,
    proxy_addr: SocketAddr,
    shards: Vec<Shard<'d>>,
    ring: Ring,
    config: String,
    network: Network,
    _dir: TempDir,
}

impl<'d> Cluster<'d> {
    /// `shards` Redis shards and shardis, with [`Cluster::builder`]'s defaults.
    pub fn start(docker: &'d Cli, shards: usize) -> Result<Cluster<'d>, Error> {
        Cluster::builder().shards(shards).start(docker)
    }

    /// Defaults: 3 shards, the local images, short timeouts.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder {
            shards: 3,
            redis_image: REDIS_IMAGE.to_string(),
            shardis_image: SHARDIS_IMAGE.to_string(),
            timeouts: Timeouts {
                connect_ms: 300,
                command_ms: 500,
                reconnect_ms: 50,
                reconnect_max_ms: 500,
            },
            extra_config: String::new(),
        }
    }

    /// Where clients on the host reach shardis (`127.0.0.1:<published port>`).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// `redis://127.0.0.1:<port>/`, for redis-rs and most clients.
    pub fn proxy_url(&self) -> String {
        format!("redis://{}/", self.proxy_addr)
    }

    pub fn proxy(&self) -> &Container<'d, GenericImage> {
        &self.proxy
    }

    pub fn shards(&self) -> &[Shard<'d>] {
        &self.shards
    }

    /// The network's name (containers of your own can join it).
    pub fn network(&self) -> &str {
        self.network.name()
    }

    /// The configuration shardis runs with.
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Rewrites the configuration file mounted into the proxy's container,
    /// in place (the bind mount keeps seeing the same file); `SHARDIS.RELOAD`
    /// or a SIGHUP to the container then applies it. [`Cluster::shard_of`]
    /// keeps answering for the ring the cluster started with.
    pub fn rewrite_config(&self, text: &str) -> Result<(), Error> {
        crate::config::Config::parse(text).map_err(|e| Error::Setup(format!("invalid configuration: {e}")))?;
        let path = self._dir.0.join("proxy.toml");
        std::fs::write(&path, text).map_err(|e| Error::Setup(format!("{}: {e}", path.display())))
    }

    /// Index into [`Cluster::shards`] of the shard that owns `key`.
    pub fn shard_of(&self, key: &str) -> usize {
        self.ring.shard_of(key.as_bytes())
    }

    /// A key (`{prefix}0`, `{prefix}1`, ...) owned by shard `index`.
    /// Panics if there is no shard `index`.
    pub fn key_on_shard(&self, index: usize, prefix: &str) -> String {
        assert!(index < self.shards.len(), "no shard {index}");
        (0u64..)
            .map(|i| format!("{prefix}{i}"))
            .find(|k| self.shard_of(k) == index)
            .unwrap_or_default()
    }

    fn shard_id(&self, index: usize) -> Result<&str, Error> {
        self.shards
            .get(index)
            .map(|s| s.container.id())
            .ok_or_else(|| Error::Setup(format!("no shard {index}")))
    }

    /// Runs `redis-cli ARGS` inside shard `index` and returns its output:
    /// what the shard itself holds, bypassing shardis.
    pub fn shard_cli(&self, index: usize, args: &[&str]) -> Result<String, Error> {
        let id = self.shard_id(index)?;
        let mut cmd = vec!["exec", id, "redis-cli", "-p", "6379"];
        cmd.extend_from_slice(args);
        docker(&cmd)
    }

    /// The shard's IPv4 address on the cluster network ("" while it has none).
    pub fn shard_ip(&self, index: usize) -> Result<String, Error> {
        let id = self.shard_id(index)?;
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.network.name()
        );
        docker(&["inspect", "--format", &format, id])
    }

    /// Freezes the shard (`docker pause`): it keeps its sockets and answers nothing.
    pub fn pause_shard(&self, index: usize) -> Result<(), Error> {
        docker(&["pause", self.shard_id(index)?]).map(drop)
    }

    pub fn unpause_shard(&self, index: usize) -> Result<(), Error> {
        docker(&["unpause", self.shard_id(index)?]).map(drop)
    }

    /// Stops the shard container (its data is gone: shards do not persist).
    pub fn stop_shard(&self, index: usize) -> Result<(), Error> {
        docker(&["stop", "--time", "2", self.shard_id(index)?]).map(drop)
    }

    /// Starts a stopped shard container again and waits until it answers.
    /// Docker may give it another address; shardis finds it by name.
    pub fn start_shard(&self, index: usize) -> Result<(), Error> {
        docker(&["start", self.shard_id(index)?])?;
        self.wait_shard(index)
    }

    /// Cuts the shard off the cluster network (a partition).
    pub fn disconnect_shard(&self, index: usize) -> Result<(), Error> {
        docker(&["network", "disconnect", self.network.name(), self.shard_id(index)?]).map(drop)
    }

    /// Joins the shard to the cluster network again.
    pub fn connect_shard(&self, index: usize) -> Result<(), Error> {
        docker(&["network", "connect", self.network.name(), self.shard_id(index)?]).map(drop)
    }

    /// Waits until shard `index` answers PING (from inside its container).
    pub fn wait_shard(&self, index: usize) -> Result<(), Error> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let r = self.shard_cli(index, &["PING"]);
            match r {
                Ok(ref s) if s == "PONG" => return Ok(()),
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                Ok(s) => return Err(Error::Setup(format!("shard {index} answered {s:?} to PING"))),
                Err(e) => return Err(e),
            }
        }
    }
}
