"""One of the mutual-exclusion test's clients: redis-py's Lock (default
client settings) through shardis, checking every critical section against an
independent Redis that is not behind the proxy.

Usage: python3 lock_hammer.py PROXY_PORT CHECK_PORT NAME SECONDS
Prints "entries=N overlaps=M" and exits 0, or non-zero on an error.
"""
import sys
import time
import uuid

import redis

proxy_port, check_port, name, seconds = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
r = redis.Redis(port=proxy_port)
check = redis.Redis(port=check_port)
entries = overlaps = errors = 0
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    lock = r.lock("lock:mx", timeout=2, blocking_timeout=0.5, sleep=0.01)
    try:
        got = lock.acquire()
    except redis.exceptions.RedisError as e:
        errors += 1
        print(f"acquire: {e!r}", file=sys.stderr)
        time.sleep(0.01)
        continue
    if not got:
        continue
    me = f"{name}-{uuid.uuid4().hex}"
    # The independent store: only one holder may be inside at a time.
    if not check.set("cs:holder", me, nx=True, px=5000):
        overlaps += 1
    else:
        entries += 1
        time.sleep(0.003)
        if check.get("cs:holder") != me.encode():
            overlaps += 1
        check.delete("cs:holder")
    try:
        lock.release()
    except redis.exceptions.LockError:
        pass  # expired while a member was failing: the TTL ended it
    except redis.exceptions.RedisError as e:
        errors += 1  # the TTL ends it
        print(f"release: {e!r}", file=sys.stderr)
print(f"entries={entries} overlaps={overlaps} errors={errors}")
