//! Heap allocations per request through the proxy.
//!
//! A counting global allocator wraps the system one. The example spawns three
//! `redis-server` shards, starts an in-process shardis in front of them (the same
//! multi-threaded tokio runtime as the binary), warms up, then sends requests
//! over a raw TCP socket from a client thread that does not allocate while
//! measuring, and divides the process's allocation count by the number of
//! requests. Everything the proxy does for those requests is counted: the
//! session, the backend connection task, channels, tokio's scheduler.
//!
//! Run: `cargo run --release --example alloc_count [-- N]` (N requests per
//! case, default 200,000). `ALLOC_TRACE=K` also records the call stacks of K
//! allocations made during the first case (GET -P 1) and prints them grouped,
//! which says what each allocation is for.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use shardis::testkit::RedisNode;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static DEALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);
/// Bytes currently allocated (allocated minus freed).
static LIVE: AtomicU64 = AtomicU64::new(0);
/// Allocation count by requested size (the last bucket: larger than 4 KiB).
static BY_SIZE: [AtomicU64; 4098] = [const { AtomicU64::new(0) }; 4098];

/// Stack capture: how many allocations still to record, and what was recorded.
static TRACE_LEFT: AtomicUsize = AtomicUsize::new(0);
static TRACING: AtomicBool = AtomicBool::new(false);
static TRACES: Mutex<Vec<String>> = Mutex::new(Vec::new());

thread_local! {
    /// Set while this thread records a stack, so the recording's own
    /// allocations are not recorded (they are not counted either).
    static IN_TRACE: Cell<bool> = const { Cell::new(false) };
}

fn note(size: usize) {
    LIVE.fetch_add(size as u64, Relaxed);
    if IN_TRACE.with(|t| t.get()) {
        return;
    }
    ALLOCS.fetch_add(1, Relaxed);
    BYTES.fetch_add(size as u64, Relaxed);
    BY_SIZE[size.min(4097)].fetch_add(1, Relaxed);
    if TRACING.load(Relaxed) && TRACE_LEFT.load(Relaxed) > 0 {
        IN_TRACE.with(|t| t.set(true));
        if TRACE_LEFT.fetch_sub(1, Relaxed) > 0 {
            let bt = std::backtrace::Backtrace::force_capture().to_string();
            if let Ok(mut v) = TRACES.lock() {
                v.push(format!("size {size}\n{}", condense(&bt)));
            }
        }
        IN_TRACE.with(|t| t.set(false));
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !IN_TRACE.with(|t| t.get()) {
            REALLOCS.fetch_add(1, Relaxed);
        }
        LIVE.fetch_add(new_size as u64, Relaxed);
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !IN_TRACE.with(|t| t.get()) {
            DEALLOCS.fetch_add(1, Relaxed);
        }
        LIVE.fetch_sub(layout.size() as u64, Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Keeps the frames that say who allocated: drops the allocator's and the
/// backtrace machinery's own frames and std's allocation plumbing.
fn condense(bt: &str) -> String {
    let mut out = Vec::new();
    let mut lines = bt.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim();
        let Some((_, sym)) = t.split_once(": ") else {
            continue;
        };
        if !t.chars().next().is_some_and(|c| c.is_ascii_digit()) {
            continue;
        }
        let at = match lines.peek() {
            Some(l) if l.trim().starts_with("at ") => {
                let l = lines.next().unwrap_or_default().trim().trim_start_matches("at ");
                // Keep the path from `src/` (this crate, or a dependency's).
                let short = l.rfind("/src/").map(|i| &l[i + 1..]).unwrap_or(l);
                format!(" ({short})")
            }
            _ => String::new(),
        };
        let skip = [
            "std::backtrace",
            "alloc_count::note",
            "alloc_count::Counting",
            "__rust",
            "alloc::alloc::",
            "alloc::raw_vec",
        ];
        if skip.iter().any(|s| sym.contains(s)) || sym.starts_with("<alloc_count::Counting") {
            continue;
        }
        out.push(format!("    {}{}", strip_hash(sym), at));
        if out.len() >= 10 {
            break;
        }
    }
    out.join("\n")
}

fn strip_hash(sym: &str) -> &str {
    match sym.rfind("::h") {
        Some(i) if sym.len() - i == 19 => &sym[..i],
        _ => sym,
    }
}

#[derive(Clone, Copy)]
struct Snapshot {
    allocs: u64,
    reallocs: u64,
    deallocs: u64,
    bytes: u64,
}

fn snapshot() -> Snapshot {
    Snapshot {
        allocs: ALLOCS.load(Relaxed),
        reallocs: REALLOCS.load(Relaxed),
        deallocs: DEALLOCS.load(Relaxed),
        bytes: BYTES.load(Relaxed),
    }
}

fn sizes() -> Vec<u64> {
    BY_SIZE.iter().map(|a| a.load(Relaxed)).collect()
}

fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One measured case: `batch` is `pipeline` requests back to back, and
/// `reply_len` the exact byte length of their replies.
struct Case {
    name: &'static str,
    pipeline: usize,
    batch: Vec<u8>,
    reply_len: usize,
}

const VALUE: &[u8] = b"0123456789abcdef"; // every key holds this 16-byte value
const KEYS: usize = 100;

fn cases() -> Vec<Case> {
    let get_reply = format!("${}\r\n", VALUE.len()).len() + VALUE.len() + 2;
    let gets = |p: usize| -> Vec<u8> {
        (0..p)
            .flat_map(|i| resp(&[b"GET", format!("key:{}", i % KEYS).as_bytes()]))
            .collect()
    };
    let sets = |p: usize| -> Vec<u8> {
        (0..p)
            .flat_map(|i| resp(&[b"SET", format!("key:{}", i % KEYS).as_bytes(), VALUE]))
            .collect()
    };
    let multi = |cmd: &[u8], keys: &dyn Fn(usize) -> String, with_values: bool| -> Vec<u8> {
        let mut args: Vec<Vec<u8>> = vec![cmd.to_vec()];
        for i in 0..10 {
            args.push(keys(i).into_bytes());
            if with_values {
                args.push(VALUE.to_vec());
            }
        }
        let refs: Vec<&[u8]> = args.iter().map(|a| a.as_slice()).collect();
        resp(&refs)
    };
    let spread = |i: usize| format!("key:{i}");
    let tagged = |i: usize| format!("{{tag}}:{i}");
    vec![
        Case {
            name: "GET -P 1",
            pipeline: 1,
            batch: gets(1),
            reply_len: get_reply,
        },
        Case {
            name: "GET -P 16",
            pipeline: 16,
            batch: gets(16),
            reply_len: 16 * get_reply,
        },
        Case {
            name: "SET -P 16",
            pipeline: 16,
            batch: sets(16),
            reply_len: 16 * 5,
        },
        Case {
            name: "MGET 10 keys -P 1 (3 shards)",
            pipeline: 1,
            batch: multi(b"MGET", &spread, false),
            reply_len: 5 + 10 * get_reply,
        },
        Case {
            name: "MSET 10 keys -P 1 (3 shards)",
            pipeline: 1,
            batch: multi(b"MSET", &spread, true),
            reply_len: 5,
        },
        Case {
            name: "MGET 10 keys -P 1 (1 shard, hash tag)",
            pipeline: 1,
            batch: multi(b"MGET", &tagged, false),
            reply_len: 5 + 10 * get_reply,
        },
    ]
}

/// Sends `batches` batches and reads every reply, without allocating.
fn run(sock: &mut TcpStream, case: &Case, batches: usize, buf: &mut [u8]) {
    for _ in 0..batches {
        sock.write_all(&case.batch).expect("write");
        let mut got = 0;
        while got < case.reply_len {
            let n = sock.read(buf).expect("read");
            assert!(n > 0, "proxy closed the connection");
            got += n;
        }
        assert_eq!(got, case.reply_len, "unexpected reply length (an error reply?)");
    }
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(200_000);
    let trace: usize = std::env::var("ALLOC_TRACE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);

    // The shards' names decide which keys share a shard (the MGET cases), so
    // they stay as in earlier reports.
    let shards: Vec<RedisNode> = (0..3).map(|_| RedisNode::start()).collect();
    let mut backends = String::new();
    for (name, shard) in ["shard-a", "shard-b", "shard-c"].iter().zip(&shards) {
        backends.push_str(&format!(
            "[[backends]]\nname = \"{name}\"\naddr = \"{}\"\n",
            shard.addr()
        ));
    }

    let config = shardis::config::Config::parse(&format!("listen = \"127.0.0.1:0\"\n{backends}")).expect("config");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let addr = rt.block_on(async {
        let server = shardis::server::Server::bind(config, None).await.expect("bind");
        let addr = server.local_addr().expect("addr");
        tokio::spawn(server.run());
        addr
    });

    let mut sock = TcpStream::connect(addr).expect("connect to proxy");
    sock.set_nodelay(true).expect("nodelay");
    let mut buf = vec![0u8; 1 << 20];
    // Load the keys, then warm up every case (buffers reach their working
    // size, lazily started tasks and connections exist).
    let load: Vec<u8> = (0..KEYS)
        .flat_map(|i| {
            let mut r = resp(&[b"SET", format!("key:{i}").as_bytes(), VALUE]);
            r.extend(resp(&[b"SET", format!("{{tag}}:{i}").as_bytes(), VALUE]));
            r
        })
        .collect();
    run(
        &mut sock,
        &Case {
            name: "load",
            pipeline: 2 * KEYS,
            batch: load,
            reply_len: 2 * KEYS * 5,
        },
        1,
        &mut buf,
    );
    let cases = cases();
    for c in &cases {
        run(&mut sock, c, 20_000 / c.pipeline, &mut buf);
    }
    std::thread::sleep(Duration::from_millis(100));

    println!("# Heap allocations per request through shardis (3 backends, pool of 2 connections each)\n");
    println!("| case | requests | allocs/req | reallocs/req | deallocs/req | bytes allocated/req |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut size_tables = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let batches = (n / c.pipeline).max(1);
        let reqs = (batches * c.pipeline) as f64;
        if i == 0 && trace > 0 {
            TRACE_LEFT.store(trace, Relaxed);
            TRACING.store(true, Relaxed);
        }
        let s0 = sizes();
        let a = snapshot();
        run(&mut sock, c, batches, &mut buf);
        let b = snapshot();
        let s1 = sizes();
        TRACING.store(false, Relaxed);
        println!(
            "| {} | {} | {:.3} | {:.3} | {:.3} | {:.0} |",
            c.name,
            reqs,
            (b.allocs - a.allocs) as f64 / reqs,
            (b.reallocs - a.reallocs) as f64 / reqs,
            (b.deallocs - a.deallocs) as f64 / reqs,
            (b.bytes - a.bytes) as f64 / reqs,
        );
        let mut by: Vec<(usize, f64)> = s1
            .iter()
            .zip(&s0)
            .enumerate()
            .filter(|(_, (x, y))| **x > **y)
            .map(|(size, (x, y))| (size, (*x - *y) as f64 / reqs))
            .collect();
        by.sort_by(|x, y| y.1.total_cmp(&x.1));
        size_tables.push((c.name, by));
    }
    println!("\nAllocations per request by requested size (bytes; 4097 = larger than 4 KiB), top 8:\n");
    for (name, by) in size_tables {
        let parts: Vec<String> = by.iter().take(8).map(|(s, n)| format!("{s} B: {n:.2}")).collect();
        println!("- {name}: {}", parts.join(", "));
    }
    // What one idle client costs: connect, one PING (answered by the proxy
    // itself), then nothing. Live bytes = allocated minus freed.
    let idle = 1000;
    let a = snapshot();
    let live0 = LIVE.load(Relaxed);
    let mut clients = Vec::with_capacity(idle);
    let trace_idle: usize = std::env::var("ALLOC_TRACE_IDLE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if trace_idle > 0 {
        TRACES.lock().expect("traces").clear();
        TRACE_LEFT.store(trace_idle, Relaxed);
        TRACING.store(true, Relaxed);
    }
    for _ in 0..idle {
        let mut c = TcpStream::connect(addr).expect("connect idle client");
        c.write_all(b"*1\r\n$4\r\nPING\r\n").expect("ping");
        let mut pong = [0u8; 7];
        c.read_exact(&mut pong).expect("pong");
        clients.push(c);
    }
    std::thread::sleep(Duration::from_millis(200));
    TRACING.store(false, Relaxed);
    let b = snapshot();
    let live = LIVE.load(Relaxed) as i64 - live0 as i64;
    println!(
        "\nPer idle client connection (connected, one PING): {:.1} allocations, {:.0} bytes live on the heap",
        (b.allocs - a.allocs) as f64 / idle as f64,
        live as f64 / idle as f64
    );
    drop(clients);
    if trace_idle > 0 {
        let traces = std::mem::take(&mut *TRACES.lock().expect("traces"));
        println!("\n## Stacks of the first {trace_idle} allocations made for idle clients\n");
        for t in traces {
            println!("{t}\n");
        }
    }

    if trace > 0 {
        let traces = std::mem::take(&mut *TRACES.lock().expect("traces"));
        let mut grouped: BTreeMap<String, usize> = BTreeMap::new();
        for t in traces {
            *grouped.entry(t).or_default() += 1;
        }
        let mut grouped: Vec<(String, usize)> = grouped.into_iter().collect();
        grouped.sort_by_key(|g| std::cmp::Reverse(g.1));
        println!("\n## Stacks of {trace} allocations recorded during GET -P 1 (count, size, frames)\n");
        for (stack, count) in grouped {
            println!("{count} × {stack}\n");
        }
    }
    drop(sock);
    rt.shutdown_timeout(Duration::from_millis(100));
}
