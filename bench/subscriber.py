#!/usr/bin/env python3
"""Pub/sub message throughput through a shardis subscriber connection.

Starts one redis-server and a shardis (the binary given, default
target/debug/shardis) in front of it, subscribes through the proxy, then
PUBLISHes N small messages straight to the shard (pipelined, so the
publisher is not what is measured) and times the subscriber from the first
message to the last. Prints messages/s and the proxy's CPU time per
message (utime+stime from /proc, steadier than wall time on a shared
machine); RUNS runs (env), the medians.

    bench/subscriber.py [BINARY] [N]
"""
import os, socket, statistics, subprocess, sys, tempfile, time

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(port, timeout=10):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"port {port} never opened")

def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

def run_once(proxy_port, redis_port, n, payload, pid):
    sub = socket.create_connection(("127.0.0.1", proxy_port))
    sub.sendall(b"SUBSCRIBE bench\r\n")
    buf = b""
    while b":1\r\n" not in buf:
        buf += sub.recv(4096)
    pub = socket.create_connection(("127.0.0.1", redis_port))
    cmd = b"*3\r\n$7\r\nPUBLISH\r\n$5\r\nbench\r\n$%d\r\n%s\r\n" % (len(payload), payload)
    msg = b"*3\r\n$7\r\nmessage\r\n$5\r\nbench\r\n$%d\r\n%s\r\n" % (len(payload), payload)
    want = len(msg) * n
    data = cmd * n
    got = 0
    start = None
    cpu0 = cpu_seconds(pid)
    import threading
    t = threading.Thread(target=pub.sendall, args=(data,)); t.start()
    while got < want:
        chunk = sub.recv(1 << 20)
        if not chunk:
            raise SystemExit("subscriber closed")
        if start is None:
            start = time.perf_counter()
        got += len(chunk)
    elapsed = time.perf_counter() - start
    cpu = cpu_seconds(pid) - cpu0
    t.join()
    assert got == want, (got, want)
    sub.close(); pub.close()
    return n / elapsed, cpu / n * 1e9

def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/debug/shardis"
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
    runs = int(os.environ.get("RUNS", "5"))
    d = tempfile.mkdtemp()
    rport, pport = free_port(), free_port()
    procs = [subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", d], stdout=subprocess.DEVNULL)]
    wait_port(rport)
    cfg = os.path.join(d, "proxy.toml")
    with open(cfg, "w") as f:
        f.write(f'listen = "127.0.0.1:{pport}"\nthreads = 1\n[[backends]]\nname = "a"\naddr = "127.0.0.1:{rport}"\n')
    procs.append(subprocess.Popen([binary, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        wait_port(pport)
        res = [run_once(pport, rport, n, b"x" * 16, procs[1].pid) for _ in range(runs)]
        rates, cpu = [r for r, _ in res], [c for _, c in res]
        print(f"{binary}: {n} messages of 16 B, runs (msg/s): {', '.join(f'{r:,.0f}' for r in rates)}; "
              f"median {statistics.median(rates):,.0f} msg/s; proxy CPU median {statistics.median(cpu):,.0f} ns/message")
    finally:
        for p in procs:
            p.terminate()

if __name__ == "__main__":
    main()
