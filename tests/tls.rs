//! TLS on both sides (README, Security): clients -> shardis over TLS
//! (redis-rs, redis-cli, redis-benchmark, redis-py), mutual TLS, backends
//! reached over TLS (Debian's redis-server with `--tls-port`), and a
//! certificate reload. The certificates are made here with rcgen: a CA, a
//! server certificate for 127.0.0.1 and localhost, a client certificate.

#[path = "support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use shardis::config::Config;
use shardis::server::Server;
use shardis::state::Shared;
use shardis::tls::rustls;
use shardis::workers::Workers;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A test's certificates, in a directory of their own.
struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
    ca_pem: String,
}

impl Pki {
    fn new(label: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!("shardis-tls-{}-{label}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "shardis test CA");
        let ca_pem = p.self_signed(&key).unwrap().pem();
        std::fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        Pki {
            dir,
            ca: Issuer::new(p, key),
            ca_pem,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    /// A certificate signed by the CA for 127.0.0.1 and localhost, as
    /// `<name>.pem` and `<name>.key`; its PEM.
    fn leaf(&self, name: &str, serial: u64) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        p.distinguished_name
            .push(DnType::CommonName, format!("{name} {serial}"));
        p.serial_number = Some(SerialNumber::from(serial));
        let pem = p.signed_by(&key, &self.ca).unwrap().pem();
        std::fs::write(self.path(&format!("{name}.pem")), &pem).unwrap();
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).unwrap();
        pem
    }

    fn p(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// `[tls]` with the server certificate `server.pem`, then `more`.
    fn section(&self, more: &str) -> String {
        format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n{more}\n",
            self.p("server.pem"),
            self.p("server.key")
        )
    }

    /// redis-rs over TLS, trusting the CA, with `client`'s certificate.
    fn client(&self, addr: SocketAddr, client: Option<&str>) -> redis::Client {
        let client_tls = client.map(|c| redis::ClientTlsConfig {
            client_cert: std::fs::read(self.path(&format!("{c}.pem"))).unwrap(),
            client_key: std::fs::read(self.path(&format!("{c}.key"))).unwrap(),
        });
        let certs = redis::TlsCertificates {
            client_tls,
            root_cert: Some(self.ca_pem.clone().into_bytes()),
        };
        redis::Client::build_with_tls(format!("rediss://127.0.0.1:{}/", addr.port()), certs).unwrap()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A proxy started in-process from `text`, with its TLS address.
struct TlsProxy {
    addr: SocketAddr,
    tls: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
    _workers: Option<Workers>,
}

impl TlsProxy {
    async fn start(text: &str, workers: usize) -> TlsProxy {
        let cfg = Config::parse(text).expect("valid test config");
        let workers = (workers > 0).then(|| Workers::start(workers, |_| {}).unwrap());
        let executors = workers.as_ref().map(|w| w.executors()).unwrap_or_default();
        let server = Server::bind_on(cfg, None, executors).await.expect("bind");
        TlsProxy {
            addr: server.local_addr().unwrap(),
            tls: server.tls_addr().expect("TLS is on"),
            shared: server.shared.clone(),
            task: tokio::spawn(server.run()),
            _workers: workers,
        }
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn conn(c: &redis::Client) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    c.get_multiplexed_async_connection().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_rs_get_set_and_pipeline_through_a_tls_proxy() {
    let pki = Pki::new("rs");
    pki.leaf("server", 1);
    let nodes = [RedisNode::start(), RedisNode::start()];
    // On worker threads, as the binary runs: the handshake happens there.
    let proxy = TlsProxy::start(&config_text(&[&nodes[0], &nodes[1]], &pki.section("")), 2).await;
    assert_eq!(proxy.addr, proxy.tls, "without tls.listen the one address is TLS only");
    let mut c = conn(&pki.client(proxy.tls, None)).await.expect("TLS connection");
    let () = redis::cmd("SET").arg("k").arg("v").query_async(&mut c).await.unwrap();
    let v: String = redis::cmd("GET").arg("k").query_async(&mut c).await.unwrap();
    assert_eq!(v, "v");
    let mut pipe = redis::pipe();
    for i in 0..200 {
        pipe.cmd("SET").arg(format!("key:{i}")).arg(i).ignore();
    }
    let keys: Vec<String> = (0..200).map(|i| format!("key:{i}")).collect();
    pipe.cmd("MGET").arg(&keys);
    let (got,): (Vec<i64>,) = pipe.query_async(&mut c).await.unwrap();
    assert_eq!(got, (0..200).collect::<Vec<i64>>());
    // Both shards got keys: the proxy spread them as usual.
    for n in &nodes {
        let size: i64 = redis::cmd("DBSIZE").query(&mut n.client()).unwrap();
        assert!(size > 10, "shard {} has {size} keys", n.addr());
    }
    // A large value crosses several TLS records both ways.
    let big = "x".repeat(1 << 20);
    let () = redis::cmd("SET")
        .arg("big")
        .arg(&big)
        .query_async(&mut c)
        .await
        .unwrap();
    let back: String = redis::cmd("GET").arg("big").query_async(&mut c).await.unwrap();
    assert_eq!(back.len(), big.len());
    // Replies larger than the socket buffers (a pipeline of 24 GETs of
    // 1 MiB) reach a client that starts reading late, whole.
    let get = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(24);
    let want = 24 * (big.len() + "$1048576\r\n\r\n".len());
    for _ in 0..3 {
        assert_eq!(slow_reader(proxy.tls, &pki.ca(), &get, want).await, want);
    }
    // A subscriber over TLS hears a publish.
    let mut sub = raw_tls(proxy.tls, &pki.ca()).await;
    sub.write_all(b"*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n").await.unwrap();
    assert!(read_until_tls(&mut sub, "news\r\n:1\r\n").await.contains(":1\r\n"));
    let n: i64 = redis::cmd("PUBLISH")
        .arg("news")
        .arg("hello-tls")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(read_until_tls(&mut sub, "hello-tls").await.contains("hello-tls"));
    // Plaintext on the TLS port gets no Redis reply.
    let out = raw_roundtrip(proxy.tls, b"PING\r\n", 7, Duration::from_millis(500));
    assert!(!String::from_utf8_lossy(&out).contains("PONG"), "{out:?}");
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().expect("the command runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `redis-cli --tls` against `addr` (off the runtime's threads).
async fn cli(pki: &Pki, addr: SocketAddr, client: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["--tls", "--cacert", &pki.p("ca.pem")]);
    if let Some(c) = client {
        cmd.args([
            "--cert",
            &pki.p(&format!("{c}.pem")),
            "--key",
            &pki.p(&format!("{c}.key")),
        ]);
    }
    cmd.args(["-h", "127.0.0.1", "-p", &addr.port().to_string()]).args(args);
    tokio::task::spawn_blocking(move || run(&mut cmd)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_redis_benchmark_and_redis_py_over_tls_next_to_a_plain_port() {
    let pki = Pki::new("cli");
    pki.leaf("server", 1);
    let node = RedisNode::start();
    let text = config_text(&[&node], &pki.section("listen = \"127.0.0.1:0\""));
    let proxy = TlsProxy::start(&text, 0).await;
    assert_ne!(proxy.addr, proxy.tls, "tls.listen is an address of its own");
    let (ok, out) = cli(&pki, proxy.tls, None, &["SET", "from-cli", "hello"]).await;
    assert!(ok && out.contains("OK"), "{out}");
    let (ok, out) = cli(&pki, proxy.tls, None, &["GET", "from-cli"]).await;
    assert!(ok && out.trim() == "hello", "{out}");
    // The plain port still serves plain clients.
    let mut plain = redis::Client::open(format!("redis://{}/", proxy.addr))
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let v: String = redis::cmd("GET").arg("from-cli").query_async(&mut plain).await.unwrap();
    assert_eq!(v, "hello");
    // redis-benchmark --tls: every request answered.
    let port = proxy.tls.port().to_string();
    let ca = pki.p("ca.pem");
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run(Command::new("redis-benchmark").args([
            "--tls",
            "--cacert",
            &ca,
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-c",
            "5",
            "-n",
            "2000",
            "-t",
            "set,get",
            "-q",
        ]))
    })
    .await
    .unwrap();
    assert!(ok && out.contains("SET: ") && out.contains("GET: "), "{out}");
    assert!(!out.to_lowercase().contains("error"), "{out}");
    // redis-py with ssl=True.
    let script = r#"
import sys, redis
r = redis.Redis(host="127.0.0.1", port=int(sys.argv[1]), ssl=True, ssl_ca_certs=sys.argv[2])
r.set("from-py", "py")
assert r.get("from-py") == b"py", r.get("from-py")
p = r.pipeline(transaction=False)
for i in range(50):
    p.set(f"py:{i}", i)
p.mget([f"py:{i}" for i in range(50)])
res = p.execute()
assert res[-1] == [str(i).encode() for i in range(50)], res[-1]
print("py ok")
"#;
    let (port, ca) = (proxy.tls.port().to_string(), pki.p("ca.pem"));
    let (ok, out) = tokio::task::spawn_blocking(move || run(Command::new("python3").args(["-c", script, &port, &ca])))
        .await
        .unwrap();
    assert!(ok && out.contains("py ok"), "redis-py over TLS: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let pki = Pki::new("mtls");
    pki.leaf("server", 1);
    pki.leaf("client", 2);
    let node = RedisNode::start();
    let more = format!("client_ca = \"{}\"\nrequire_client_cert = true", pki.p("ca.pem"));
    let proxy = TlsProxy::start(&config_text(&[&node], &pki.section(&more)), 0).await;
    // Without a certificate: no connection (the handshake, or the first
    // reply after it, fails).
    let refused = async {
        let mut c = conn(&pki.client(proxy.tls, None)).await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    let r = tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("answers");
    assert!(r.is_err(), "a client without a certificate was served: {r:?}");
    let (ok, out) = cli(&pki, proxy.tls, None, &["PING"]).await;
    assert!(
        !(ok && out.contains("PONG")),
        "redis-cli without --cert was served: {out}"
    );
    // A certificate signed by another CA is refused too.
    let other = Pki::new("mtls-other");
    other.leaf("client", 3);
    let certs = redis::TlsCertificates {
        client_tls: Some(redis::ClientTlsConfig {
            client_cert: std::fs::read(other.path("client.pem")).unwrap(),
            client_key: std::fs::read(other.path("client.key")).unwrap(),
        }),
        root_cert: Some(pki.ca_pem.clone().into_bytes()),
    };
    let stranger = redis::Client::build_with_tls(format!("rediss://127.0.0.1:{}/", proxy.tls.port()), certs).unwrap();
    let r = async {
        let mut c = conn(&stranger).await?;
        redis::cmd("PING").query_async::<String>(&mut c).await
    };
    let r = tokio::time::timeout(Duration::from_secs(10), r).await.expect("answers");
    assert!(r.is_err(), "a certificate of another CA was accepted: {r:?}");
    // With the CA's client certificate: served.
    let mut c = conn(&pki.client(proxy.tls, Some("client"))).await.expect("mutual TLS");
    let pong: String = redis::cmd("PING").query_async(&mut c).await.unwrap();
    assert_eq!(pong, "PONG");
    let (ok, out) = cli(&pki, proxy.tls, Some("client"), &["PING"]).await;
    assert!(ok && out.contains("PONG"), "{out}");
}

/// A TLS-only redis-server asking for client certificates.
fn tls_node(pki: &Pki, name: &str, serial: u64) -> RedisNode {
    pki.leaf(name, serial);
    let tls = NodeTls {
        cert: pki.path(&format!("{name}.pem")),
        key: pki.path(&format!("{name}.key")),
        ca: pki.ca(),
        auth_clients: true,
    };
    RedisNode::start_tls(&tls, &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_over_tls_with_a_client_certificate() {
    let pki = Pki::new("backend");
    pki.leaf("proxy-client", 10);
    let nodes = [tls_node(&pki, "b0", 11), tls_node(&pki, "b1", 12)];
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[timeouts]\nconnect_ms = 2000\n[tls]\nbackend_ca = \"{}\"\nbackend_cert = \"{}\"\nbackend_key = \"{}\"\n\
         [[backends]]\nname = \"a\"\naddr = \"{}\"\ntls = true\n\
         [[backends]]\nname = \"b\"\naddr = \"localhost:{}\"\ntls = {{ server_name = \"localhost\" }}\n",
        pki.p("ca.pem"),
        pki.p("proxy-client.pem"),
        pki.p("proxy-client.key"),
        nodes[0].addr(),
        nodes[1].port,
    );
    let proxy = Proxy::start_text(&text, 0).await;
    let mut c = proxy.conn().await;
    for i in 0..100 {
        let () = redis::cmd("SET")
            .arg(format!("t:{i}"))
            .arg(i)
            .query_async(&mut c)
            .await
            .unwrap();
    }
    let keys: Vec<String> = (0..100).map(|i| format!("t:{i}")).collect();
    let got: Vec<i64> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await.unwrap();
    assert_eq!(got, (0..100).collect::<Vec<i64>>());
    // The keys are on the TLS servers, read back over TLS with redis-cli.
    let total: i64 = nodes
        .iter()
        .map(|n| n.cli_tls(&["DBSIZE"]).trim().parse::<i64>().unwrap_or(-1))
        .sum();
    assert_eq!(total, 100);
    // A blocking command (a connection of its own) and a WATCH transaction
    // (a conversation of its own) over TLS too.
    let mut c2 = proxy.conn().await;
    let waiter = tokio::spawn(async move {
        redis::cmd("BLPOP")
            .arg("q")
            .arg(5)
            .query_async::<(String, String)>(&mut c2)
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _: i64 = redis::cmd("RPUSH")
        .arg("q")
        .arg("job")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(waiter.await.unwrap().unwrap(), ("q".to_string(), "job".to_string()));
    let mut tx = redis::Client::open(proxy.url()).unwrap().get_connection().unwrap();
    let () = redis::cmd("WATCH").arg("w").query(&mut tx).unwrap();
    let r: (i64,) = redis::pipe().atomic().incr("w", 1).query(&mut tx).unwrap();
    assert_eq!(r, (1,));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_whose_certificate_does_not_match_is_refused_with_the_reason() {
    let pki = Pki::new("backend-name");
    let node = tls_node(&pki, "b0", 21);
    // Its certificate names 127.0.0.1 and localhost, not this name; and
    // no client certificate is shown to a server that asks for one.
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[tls]\nbackend_ca = \"{}\"\n[[backends]]\nname = \"a\"\naddr = \"{}\"\ntls = {{ server_name = \"redis.example\" }}\n",
        pki.p("ca.pem"),
        node.addr()
    );
    let proxy = Proxy::start_text(&text, 0).await;
    let mut c = proxy.conn().await;
    let e = redis::cmd("GET")
        .arg("k")
        .query_async::<Option<String>>(&mut c)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("TLS handshake"), "{e}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_master_named_by_sentinel() {
    let pki = Pki::new("sentinel");
    let master = tls_node(&pki, "m", 31);
    // The Sentinel reaches the TLS master over TLS (tls-replication, its
    // certificate as a client certificate); the proxy asks it over plain TCP.
    pki.leaf("sentinel", 32);
    let conf = format!(
        "tls-replication yes\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n",
        pki.p("sentinel.pem"),
        pki.p("sentinel.key"),
        pki.p("ca.pem")
    );
    let sentinel = SentinelNode::start_with(&[("tlsmaster", master.port)], SentinelTiming::default(), &conf);
    pki.leaf("proxy-client", 33);
    let text = format!(
        "listen = \"127.0.0.1:0\"\n[sentinel]\naddrs = [\"{}\"]\n[tls]\nbackend_ca = \"{}\"\nbackend_cert = \"{}\"\nbackend_key = \"{}\"\n\
         [[backends]]\nname = \"a\"\nmaster = \"tlsmaster\"\ntls = true\n",
        sentinel.addr(),
        pki.p("ca.pem"),
        pki.p("proxy-client.pem"),
        pki.p("proxy-client.key"),
    );
    let proxy = Proxy::start_text(&text, 0).await;
    let mut c = proxy.conn().await;
    let mut last = None;
    for _ in 0..50 {
        match redis::cmd("SET").arg("s").arg("tls").query_async::<()>(&mut c).await {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(last.is_none(), "{last:?}");
    assert_eq!(master.cli_tls(&["GET", "s"]).trim(), "tls");
}

#[test]
fn a_missing_or_bad_file_refuses_the_configuration_naming_it() {
    let pki = Pki::new("bad");
    pki.leaf("server", 1);
    let base = "listen = \"127.0.0.1:0\"\n[[backends]]\nname = \"a\"\naddr = \"127.0.0.1:1\"\n";
    let err = |tls: &str| Config::parse(&format!("{tls}\n{base}")).unwrap_err().to_string();
    let missing = pki.p("nope.pem");
    let e = err(&format!(
        "[tls]\ncert = \"{missing}\"\nkey = \"{}\"",
        pki.p("server.key")
    ));
    assert!(e.contains("tls.cert") && e.contains(&missing), "{e}");
    std::fs::write(pki.path("garbage.pem"), "not a certificate").unwrap();
    let e = err(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"",
        pki.p("garbage.pem"),
        pki.p("server.key")
    ));
    assert!(e.contains("tls.cert") && e.contains("garbage.pem"), "{e}");
    // A key that is not the certificate's.
    pki.leaf("other", 2);
    let e = err(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"",
        pki.p("server.pem"),
        pki.p("other.key")
    ));
    assert!(e.contains("server.pem") && e.contains("other.key"), "{e}");
    let e = err(&format!("[tls]\ncert = \"{}\"", pki.p("server.pem")));
    assert!(e.contains("cert and key go together"), "{e}");
    // A TLS backend without a CA.
    let e = Config::parse(&base.replace("127.0.0.1:1\"", "127.0.0.1:1\"\ntls = true")).unwrap_err();
    assert!(e.to_string().contains("backends[0].tls: needs a CA"), "{e}");
    let e = Config::parse(&format!("{base}tls = {{ ca = \"{missing}\" }}\n")).unwrap_err();
    assert!(
        e.to_string().contains("backends[0].tls.ca") && e.to_string().contains(&missing),
        "{e}"
    );
    let e = Config::parse(&format!("{base}tls = {{ bogus = 1 }}\n")).unwrap_err();
    assert!(e.to_string().contains("server_name"), "{e}");
}

type RawTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// A raw TLS connection to `addr` (as `localhost`), trusting `ca`.
async fn raw_tls(addr: SocketAddr, ca: &Path) -> RawTls {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).unwrap();
    roots
        .add(rustls::pki_types::pem::PemObject::from_pem_slice(&pem).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .expect("TLS handshake")
}

/// Reads from `s` until `want` is in what arrived (or 5 s).
async fn read_until_tls(s: &mut RawTls, want: &str) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(&out).contains(want) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => out.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The certificate a new TLS connection to `addr` is shown.
async fn presented(addr: SocketAddr, ca: &Path) -> Vec<u8> {
    let mut s = raw_tls(addr, ca).await;
    s.write_all(b"PING\r\n").await.unwrap();
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"+PONG\r\n");
    s.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// A TLS client that sends `req` and stops reading for a while, so the
/// proxy's writes of the reply block part way; then reads `want` bytes.
async fn slow_reader(addr: SocketAddr, ca: &Path, req: &[u8], want: usize) -> usize {
    let mut s = raw_tls(addr, ca).await;
    s.write_all(req).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = 0;
    let mut buf = vec![0u8; 1 << 16];
    while got < want {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got += n,
            _ => break,
        }
    }
    got
}

fn der(pem: &str) -> Vec<u8> {
    let c: rustls::pki_types::CertificateDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).unwrap();
    c.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_puts_a_new_certificate_in_service_and_refuses_a_bad_one() {
    let pki = Pki::new("reload");
    let first = pki.leaf("server", 100);
    let node = RedisNode::start();
    let text = config_text(&[&node], &pki.section(""));
    let path = pki.path("proxy.toml");
    std::fs::write(&path, &text).unwrap();
    let proxy = TlsProxy::start(&text, 0).await;
    assert_eq!(presented(proxy.tls, &pki.ca()).await, der(&first));
    let mut old = conn(&pki.client(proxy.tls, None)).await.unwrap();
    let () = redis::cmd("SET").arg("r").arg("1").query_async(&mut old).await.unwrap();
    // New files, same paths: a reload reads them.
    let second = pki.leaf("server", 101);
    shardis::control::reload(&proxy.shared, &path).await.expect("reload");
    assert_eq!(
        presented(proxy.tls, &pki.ca()).await,
        der(&second),
        "a new connection sees the new certificate"
    );
    // The connection made before the reload goes on.
    let v: String = redis::cmd("GET").arg("r").query_async(&mut old).await.unwrap();
    assert_eq!(v, "1");
    // A bad certificate: the reload is refused naming the file, and the
    // certificate in service stays.
    std::fs::write(
        pki.path("server.pem"),
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let e = shardis::control::reload(&proxy.shared, &path).await.unwrap_err();
    assert!(
        e.to_string().contains("tls.cert") && e.to_string().contains("server.pem"),
        "{e}"
    );
    assert_eq!(presented(proxy.tls, &pki.ca()).await, der(&second));
    // Turning TLS off needs a restart: the reload applies, the running
    // [tls] stays, and the address stays TLS only.
    std::fs::write(&path, config_text(&[&node], "")).unwrap();
    shardis::control::reload(&proxy.shared, &path)
        .await
        .expect("reload without [tls]");
    assert_eq!(presented(proxy.tls, &pki.ca()).await, der(&second));
}

#[test]
fn sighup_reloads_the_certificate_of_the_binary() {
    let pki = Pki::new("sighup");
    let first = pki.leaf("server", 200);
    let node = RedisNode::start();
    let tls_port = free_port();
    // ShardisProcess gives the main (plain) listen address.
    let text = config_text(&[&node], &pki.section(&format!("listen = \"127.0.0.1:{tls_port}\"")))
        .replace("listen = \"127.0.0.1:0\"\n", "");
    let mut p = ShardisProcess::start(env!("CARGO_BIN_EXE_shardis"), "tls-sighup", &text);
    let tls: SocketAddr = format!("127.0.0.1:{tls_port}").parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    assert_eq!(rt.block_on(presented(tls, &pki.ca())), der(&first));
    let second = pki.leaf("server", 201);
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(p.pid(), libc::SIGHUP) };
    wait_until(Duration::from_secs(10), "the new certificate in service", || {
        rt.block_on(presented(tls, &pki.ca())) == der(&second)
    });
    assert!(p.is_running(), "{}", p.log());
}
