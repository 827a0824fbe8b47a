#!/usr/bin/env python3
"""End-to-end comparison: direct Redis, twemproxy, predixy and shardis, same machine, same run.

Owns the benchmark procedure behind `bench/compare.sh` (which builds the release binary, and
predixy from a source directory when one is given, and calls this). It starts 3 redis-server shards
on free loopback ports, twemproxy (nutcracker) with an equivalent 3-shard ketama config, predixy
(when PREDIXY names its binary) with a 3-group standalone pool, and shardis in front of the same
shards; checks that each contender really serves GET/SET/MSET/MGET (real values, no error replies);
before each row that reads (GET, MGET) sets every key it can read on every shard with values of the
row's size, so each contender reads what the row says whatever shard it places a key on; then runs
redis-benchmark row by row, interleaving the contenders run by run, each run starting one contender
later (A B C, B C A, ...), and prints medians as a markdown table with each shardis's ratio to the best peer of that row (the
proxy with the highest throughput). It also measures each proxy's CPU time (user+sys from
/proc/PID/stat) per million requests of every row, with the ratio to the peer that spent the
least, and the RSS of each proxy holding 10,000 idle client connections.

Environment: RUNS (default 3), N (requests per run for -P 1 rows, default 200000; -P 16 rows use
4*N, the 10-key rows N/2, or N at -P 16), IDLE (idle connections, default 10000, 0 skips), ROWS (comma-separated
row names to run, default all), SHARDIS (binary, default target/release/shardis), SHARDIS_THREADS
(comma-separated `threads` settings, one shardis each, default "0,2"), NUTCRACKER, PREDIXY (its
binary; absent: predixy is left out, with a message), PREDIXY_THREADS (its WorkerThreads, default
2, one per CPU here), and SHARDIS_B: a
second shardis binary (say, the build before a change) run as extra contenders "shardis B ..."
with the same thread settings, for an interleaved A/B of one change; SHARDIS_B_CONFIG: TOML lines
added to the B contenders' configuration (say "[pool]\\nconnections = 1"), to A/B a setting.
"""

import csv
import io
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = int(os.environ.get("RUNS", "3"))
N = int(os.environ.get("N", "200000"))
IDLE = int(os.environ.get("IDLE", "10000"))
KEYSPACE = 100000
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

# shardis variants by worker threads: 0 = the default (one fewer than the CPUs, at least 1: one
# thread on 2 vCPUs), 2 = one per CPU on the 2-vCPU machines this runs on.
THREADS = [int(t) for t in os.environ.get("SHARDIS_THREADS", "0,2").split(",") if t.strip()]
MGET10 = ["mget"] + ["key:__rand_int__"] * 10

# (name, clients, pipeline, requests, value size in bytes, redis-benchmark args after the common ones)
ROWS = [
    ("GET -P 1", 50, 1, N, 16, ["-t", "get"]),
    ("SET -P 1", 50, 1, N, 16, ["-t", "set"]),
    ("GET -P 16", 50, 16, 4 * N, 16, ["-t", "get"]),
    ("SET -P 16", 50, 16, 4 * N, 16, ["-t", "set"]),
    ("MSET 10 keys", 50, 1, N // 2, 16, ["-t", "mset"]),
    ("MGET 10 keys", 50, 1, N // 2, 16, MGET10),
    ("MSET 10 keys -P 16", 50, 16, N, 16, ["-t", "mset"]),
    ("MGET 10 keys -P 16", 50, 16, N, 16, MGET10),
    ("GET 1 KiB", 50, 1, N, 1024, ["-t", "get"]),
    ("SET 1 KiB", 50, 1, N, 1024, ["-t", "set"]),
    ("GET 1000 clients", 1000, 1, N, 16, ["-t", "get"]),
]
PEERS = ("twemproxy", "predixy")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def shardis_name(threads, variant=""):
    name = f"shardis {variant}".strip()
    return name if threads == 0 else f"{name} {threads}t"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


def cli(port, *args):
    out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
    return out.stdout.strip()


def cpu_split(pid):
    """User and system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is state (field 3); utime and stime are fields 14 and 15.
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def cpu_seconds(pid):
    return sum(cpu_split(pid))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


class Cluster:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="shardis-bench-")
        self.procs = []
        self.shard_ports = [free_port() for _ in range(3)]
        for p in self.shard_ports:
            self.spawn(
                ["redis-server", "--port", str(p), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                 "--dir", self.dir, "--logfile", os.path.join(self.dir, f"redis-{p}.log")])
        for p in self.shard_ports:
            wait_port(p)
        names = ["shard-a", "shard-b", "shard-c"]
        # twemproxy: ketama over the same shards, named so placement ignores addresses.
        self.tw_port = free_port()
        tw_conf = os.path.join(self.dir, "nutcracker.yml")
        with open(tw_conf, "w") as f:
            f.write(f"bench:\n  listen: 127.0.0.1:{self.tw_port}\n  hash: fnv1a_64\n  distribution: ketama\n"
                    "  redis: true\n  preconnect: true\n  auto_eject_hosts: false\n  servers:\n")
            for p, n in zip(self.shard_ports, names):
                f.write(f"   - 127.0.0.1:{p}:1 {n}\n")
        nutcracker = os.environ.get("NUTCRACKER") or shutil.which("nutcracker") or "/usr/sbin/nutcracker"
        self.tw = self.spawn([nutcracker, "-c", tw_conf, "-s", str(free_port()), "-o",
                              os.path.join(self.dir, "nutcracker.log")])
        self.contenders = [("redis", self.shard_ports[0], None), ("twemproxy", self.tw_port, self.tw)]
        predixy = os.environ.get("PREDIXY")
        if predixy:
            # predixy: a standalone pool of 3 groups, one server each, reads on the masters.
            self.px_port = free_port()
            px_conf = os.path.join(self.dir, "predixy.conf")
            with open(px_conf, "w") as f:
                f.write(f"Name bench\nBind 127.0.0.1:{self.px_port}\n"
                        f"WorkerThreads {int(os.environ.get('PREDIXY_THREADS', '2'))}\nClientTimeout 0\n"
                        "LogVerbSample 0\nLogDebugSample 0\nLogInfoSample 0\nLogNoticeSample 0\n"
                        "LogWarnSample 1\nLogErrorSample 1\n"
                        "Authority {\n    Auth {\n        Mode admin\n    }\n}\n"
                        "StandaloneServerPool {\n    Hash crc16\n    HashTag \"{}\"\n    Distribution modula\n"
                        "    MasterReadPriority 100\n    RefreshMethod fixed\n    ServerTimeout 0\n")
                for p, n in zip(self.shard_ports, names):
                    f.write(f"    Group {n} {{\n        + 127.0.0.1:{p}\n    }}\n")
                f.write("}\n")
            self.px = self.spawn([predixy, px_conf])
            self.contenders.append(("predixy", self.px_port, self.px))
        else:
            print("predixy: left out (set PREDIXY_SRC for bench/compare.sh, or PREDIXY to its binary)",
                  file=sys.stderr)
        binaries = [("", os.environ.get("SHARDIS") or os.path.join(ROOT, "target/release/shardis"))]
        if os.environ.get("SHARDIS_B"):
            binaries.append(("B", os.environ["SHARDIS_B"]))
        env = dict(os.environ, RUST_LOG="warn")
        # One shardis per thread setting (0: the default, one fewer than the CPUs, at least 1).
        for variant, shardis in binaries:
            for threads in THREADS:
                port = free_port()
                conf = os.path.join(self.dir, f"shardis{variant}-{threads}.toml")
                with open(conf, "w") as f:
                    f.write(f'listen = "127.0.0.1:{port}"\n')
                    if threads:
                        f.write(f"threads = {threads}\n")
                    if variant == "B" and os.environ.get("SHARDIS_B_CONFIG"):
                        f.write(os.environ["SHARDIS_B_CONFIG"].replace("\\n", "\n") + "\n")
                    for p, n in zip(self.shard_ports, names):
                        f.write(f'[[backends]]\nname = "{n}"\naddr = "127.0.0.1:{p}"\n')
                log = open(os.path.join(self.dir, f"shardis{variant}-{threads}.log"), "w")
                proc = self.spawn([shardis, "--config", conf], env=env, stderr=log)
                self.contenders.append((shardis_name(threads, variant), port, proc))
        for _, port, _ in self.contenders:
            wait_port(port)

    def spawn(self, argv, env=None, stderr=subprocess.DEVNULL):
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=stderr, env=env, preexec_fn=raise_nofile)
        self.procs.append(p)
        return p

    def close(self):
        for p in reversed(self.procs):
            p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def precheck(self):
        """Every contender must give real answers to what the benchmark sends."""
        keys = [f"check:{i}" for i in range(10)]
        for name, port, _ in self.contenders:
            tag = f"v-{name}"
            assert cli(port, "SET", "check:one", tag) == "OK", f"{name}: SET failed"
            assert cli(port, "GET", "check:one") == tag, f"{name}: GET returned the wrong value"
            mset = []
            for i, k in enumerate(keys):
                mset += [k, f"{tag}-{i}"]
            assert cli(port, "MSET", *mset) == "OK", f"{name}: MSET failed"
            got = cli(port, "MGET", *keys).splitlines()
            assert got == [f"{tag}-{i}" for i in range(10)], f"{name}: MGET returned {got}"
        # Through the proxies the 10 keys must have spread over the shards.
        holders = sum(1 for p in self.shard_ports if cli(p, "EXISTS", *keys) not in ("0", ""))
        assert holders >= 2, "MSET keys did not spread across shards"


def fill(ports, size):
    """Every key a row can read (key:000000000000 .. KEYSPACE-1, redis-benchmark's __rand_int__
    keys) set on every shard with `size`-byte values, pipelined. Each proxy places a key on a
    shard of its own choosing (twemproxy's ketama, predixy's and shardis's hashes differ), and
    the SET rows before leave values of their own size on whatever shard their proxy chose; so
    without this a read row sees values of the earlier rows' size, or none, depending on the
    contender (GET 1 KiB read mostly 16-byte values, and GET 1000 clients the 1 KiB ones SET 1
    KiB had left). With every key on every shard, every contender reads what the row says."""
    value = b"x" * size
    for port in ports:
        with socket.create_connection(("127.0.0.1", port)) as s:
            batch = 1000
            for start in range(0, KEYSPACE, batch):
                buf = bytearray()
                end = min(KEYSPACE, start + batch)
                for i in range(start, end):
                    k = b"key:%012d" % i
                    buf += b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(k), k, size, value)
                s.sendall(buf)
                want, got = (end - start) * 5, 0
                while got < want:
                    chunk = s.recv(1 << 20)
                    if not chunk:
                        raise SystemExit(f"fill: shard {port} closed the connection")
                    if b"-" in chunk:
                        raise SystemExit(f"fill: shard {port} answered an error: {chunk[:100]!r}")
                    got += len(chunk)


def reads(args):
    """Whether a row's load reads keys (GET, MGET) and so needs them filled first (see `fill`)."""
    return args[:2] == ["-t", "get"] or args[:1] == ["mget"]


def bench(port, clients, pipeline, n, size, args):
    cmd = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients), "-P", str(pipeline),
           "-n", str(n), "-r", str(KEYSPACE), "-d", str(size), "--csv", "-e", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, preexec_fn=raise_nofile)
    if "Error from server" in out.stdout or "Error from server" in out.stderr:
        err = [line for line in (out.stdout + out.stderr).splitlines() if "Error" in line][:3]
        raise SystemExit(f"error replies counted as operations: {' | '.join(err)}\n{' '.join(cmd)}")
    rows = [r for r in csv.reader(io.StringIO(out.stdout)) if r and r[0] != "test"]
    if len(rows) != 1:
        raise SystemExit(f"unexpected redis-benchmark output for {' '.join(cmd)}:\n{out.stdout}\n{out.stderr}")
    r = rows[0]
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max..."
    return float(r[1]), float(r[4]), float(r[6])


def idle_rss(pid, port, count):
    """RSS of a proxy: before, with `count` connected idle clients, and after each of them sent one
    PING (a client pool that was used once and now idles)."""
    before = rss_mb(pid)
    socks = []
    ping = b"*1\r\n$4\r\nPING\r\n"
    try:
        for _ in range(count):
            socks.append(socket.create_connection(("127.0.0.1", port)))
        # Every connection must be served: a PING on the last one answers.
        socks[-1].sendall(ping)
        socks[-1].settimeout(10)
        assert socks[-1].recv(16).startswith(b"+PONG")
        time.sleep(1.0)
        connected = rss_mb(pid)
        for s in socks:
            s.sendall(ping)
        for s in socks:
            s.settimeout(10)
            assert s.recv(16).startswith(b"+PONG")
        time.sleep(1.0)
        used = rss_mb(pid)
    finally:
        for s in socks:
            s.close()
    return before, connected, used


def fmt_ops(x):
    return f"{x / 1000:.1f}k"


def main():
    raise_nofile()
    for tool in ("redis-server", "redis-benchmark", "redis-cli"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found: run SHARDIS_BENCH=1 scripts/install-deps.sh")
    only = {r.strip() for r in os.environ.get("ROWS", "").split(",") if r.strip()}
    rows = [r for r in ROWS if not only or r[0] in only]
    c = Cluster()
    contenders = c.contenders
    try:
        c.precheck()
        # Idle clients on the (nearly) fresh proxies, and again after all the load below.
        idle_fresh = {}
        if IDLE > 0:
            for cname, port, proc in c.contenders[1:]:
                idle_fresh[cname] = idle_rss(proc.pid, port, IDLE)
                time.sleep(1.0)
        results = {}  # (row, contender) -> list of (ops, p50, p99)
        cpu = {}  # (row, contender) -> list of CPU seconds per 1M requests
        sys_cpu = {}  # (row, contender) -> list of its system (kernel) part
        for name, clients, pipeline, n, size, args in rows:
            if reads(args):
                fill(c.shard_ports, size)
            for run in range(RUNS):
                # Each run starts one contender later, so no contender always runs at the same
                # place in the order: on this VM the place mattered (two shardis builds run in
                # pairs, 6 pairs each way round: whichever ran first won 10 pairs of 12).
                k = run % len(c.contenders)
                for cname, port, proc in c.contenders[k:] + c.contenders[:k]:
                    u0, s0 = cpu_split(proc.pid) if proc else (0.0, 0.0)
                    # The rest of the machine's work per request: the load generator and the shards.
                    b0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    sh0 = sum(cpu_seconds(sp.pid) for sp in c.procs[:3])
                    r = bench(port, clients, pipeline, n, size, args)
                    b1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                    sh1 = sum(cpu_seconds(sp.pid) for sp in c.procs[:3])
                    per = 1e6 / n
                    rest = (f"  bench {(b1.ru_utime + b1.ru_stime - b0.ru_utime - b0.ru_stime) * per:.2f}"
                            f" shards {(sh1 - sh0) * per:.2f} s")
                    split = rest
                    if proc:
                        u1, s1 = cpu_split(proc.pid)
                        cpu.setdefault((name, cname), []).append((u1 - u0 + s1 - s0) / n * 1e6)
                        sys_cpu.setdefault((name, cname), []).append((s1 - s0) / n * 1e6)
                        split = f"  CPU/1M usr {(u1 - u0) * per:.2f} sys {(s1 - s0) * per:.2f}{rest}"
                    results.setdefault((name, cname), []).append(r)
                    print(f"  {name:<18} run {run + 1}/{RUNS} {cname:<10} {r[0]:>10.0f} ops/s  "
                          f"p50 {r[1]:.3f} ms  p99 {r[2]:.3f} ms{split}", file=sys.stderr, flush=True)
        idle = {}
        if IDLE > 0:
            for cname, port, proc in c.contenders[1:]:
                idle[cname] = idle_rss(proc.pid, port, IDLE)
                time.sleep(1.0)
    finally:
        c.close()

    def med(row, cname, i):
        return statistics.median(r[i] for r in results[(row, cname)])

    names = [c[0] for c in contenders]
    shardises = [n for n in names if n.startswith("shardis")]
    peers = [n for n in names if n in PEERS]

    def best_peer(row):
        """The peer with the highest median throughput on this row."""
        return max(peers, key=lambda p: med(row, p, 0))

    lines = []
    lines.append(f"Medians of {RUNS} interleaved runs; N={N}; ops/s (p50/p99 latency, ms); redis-benchmark, "
                 f"{KEYSPACE} random keys, 16-byte values unless the row says otherwise. \"shardis\" runs the default "
                 "worker threads (one fewer than the CPUs, at least 1), \"shardis Nt\" `threads = N`. "
                 "The ratio columns divide by the best peer of the row (the proxy with the highest "
                 "throughput; the p99 ratio is against that same peer's p99).\n")
    ratio_heads = [f"{n}/best peer ops (p99)" for n in shardises]
    lines.append("| test | " + " | ".join(names) + " | best peer | " + " | ".join(ratio_heads) + " |")
    lines.append("|---|" + "---:|" * len(names) + "---|" + "---:|" * len(shardises))
    for name, *_ in rows:
        cells = [f"{fmt_ops(med(name, c, 0))} ({med(name, c, 1):.2f}/{med(name, c, 2):.2f})" for c in names]
        best = best_peer(name)
        cells.append(best)
        for sh in shardises:
            ratio = med(name, sh, 0) / med(name, best, 0)
            p99r = med(name, sh, 2) / med(name, best, 2)
            cells.append(f"{ratio:.2f}x ({p99r:.2f}x)")
        lines.append(f"| {name} | {' | '.join(cells)} |")
    lines.append("\nProxy CPU time (user+sys, /proc/PID/stat) per million requests, seconds (median); the "
                 "ratio divides by the peer that spent the least:\n")
    lines.append("| test | " + " | ".join(names[1:]) + " | " + " | ".join(f"{n}/best peer" for n in shardises) + " |")
    lines.append("|---|" + "---:|" * (len(names) - 1 + len(shardises)))
    for name, *_ in rows:
        cpus = {c: statistics.median(cpu[(name, c)]) for c in names[1:]}
        least = min(cpus[p] for p in peers)
        cells = [f"{cpus[c]:.2f}" for c in names[1:]]
        cells += [f"{cpus[sh] / least:.2f}x" if least else "n/a" for sh in shardises]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    # The kernel's part (the socket reads and writes a request needs, TCP over loopback, wake-ups)
    # is a floor no proxy code removes: where shardis's system CPU alone is above 0.8x the
    # least-CPU peer's total, the CPU goal (<= 0.8x) cannot be met on this machine even with no
    # user-space work at all.
    lines.append("\nThe kernel's part of that CPU (system time per million requests, seconds, median), and "
                 "shardis's system time alone divided by the least-CPU peer's total (above 0.80x: the "
                 "0.8x CPU goal is out of reach even with no user-space work):\n")
    lines.append("| test | " + " | ".join(names[1:]) + " | " + " | ".join(f"{n} sys/best peer total" for n in shardises) + " |")
    lines.append("|---|" + "---:|" * (len(names) - 1 + len(shardises)))
    for name, *_ in rows:
        least = min(statistics.median(cpu[(name, p)]) for p in peers)
        syss = {c: statistics.median(sys_cpu[(name, c)]) for c in names[1:]}
        cells = [f"{syss[c]:.2f}" for c in names[1:]]
        cells += [f"{syss[sh] / least:.2f}x" if least else "n/a" for sh in shardises]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    if idle:
        lines.append(f"\nRSS with {IDLE} idle client connections, MB: on the fresh proxy (before the load above) "
                     "and again after it; each time without clients, with them connected, and after one PING "
                     "on each:\n")
        lines.append("| proxy | when | no clients | connected | after one PING each | per connection |")
        lines.append("|---|---|---:|---:|---:|---:|")
        for when, table in (("fresh", idle_fresh), ("after load", idle)):
            for cname, (b, c, u) in table.items():
                lines.append(f"| {cname} | {when} | {b:.1f} | {c:.1f} | {u:.1f} | {(u - b) * 1024 / IDLE:.2f} KiB |")
    text = "\n".join(lines)
    print(text)
    os.makedirs(os.path.join(ROOT, "bench/results"), exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(ROOT, f"bench/results/compare-{stamp}.md"), "w") as f:
        f.write(f"# compare.sh {stamp} on {os.uname().nodename}, {os.cpu_count()} CPUs\n\n{text}\n\nRaw runs:\n\n")
        for (row, cname), rs in results.items():
            f.write(f"- {row} / {cname}: {rs}\n")


if __name__ == "__main__":
    main()
