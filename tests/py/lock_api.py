"""redis-py's Lock through shardis, default client settings: every method
behaves as against a single Redis.

Usage: python3 lock_api.py PORT. Exits non-zero on the first failure.
"""
import sys
import time

import redis
from redis.exceptions import LockError, LockNotOwnedError

port = int(sys.argv[1])
r = redis.Redis(port=port)  # library defaults (RESP3 via HELLO 3 in redis-py 8)

lock = r.lock("lock:api", timeout=5)
assert lock.acquire(blocking=False), "first acquire"
assert lock.locked() and lock.owned()
other = r.lock("lock:api", timeout=5)
assert not other.acquire(blocking=False), "held lock granted twice"
assert not other.owned()
assert 0 < r.pttl("lock:api") <= 5000
assert lock.extend(10), "extend"
assert 5000 < r.pttl("lock:api") <= 15000, r.pttl("lock:api")
assert lock.extend(3, replace_ttl=True)
assert 0 < r.pttl("lock:api") <= 3000, r.pttl("lock:api")
assert lock.reacquire()
assert 3000 < r.pttl("lock:api") <= 5000, r.pttl("lock:api")
lock.release()
assert not lock.locked() and r.get("lock:api") is None

# Released by someone else's overwrite: release and extend must fail.
lock = r.lock("lock:api", timeout=5)
assert lock.acquire(blocking=False)
r.set("lock:api", "someone-else")
assert lock.locked() and not lock.owned()
try:
    lock.extend(5)
    raise SystemExit("extend of an overwritten lock succeeded")
except LockNotOwnedError:
    pass
try:
    lock.reacquire()
    raise SystemExit("reacquire of an overwritten lock succeeded")
except LockNotOwnedError:
    pass
try:
    lock.release()
    raise SystemExit("release of an overwritten lock succeeded")
except LockNotOwnedError:
    pass
assert r.get("lock:api") == b"someone-else", "a failed release deleted someone else's lock"
r.delete("lock:api")

# Expired: release fails, the next acquire succeeds.
lock = r.lock("lock:api", timeout=0.2)
assert lock.acquire(blocking=False)
time.sleep(0.4)
assert not lock.locked()
try:
    lock.release()
    raise SystemExit("release of an expired lock succeeded")
except LockNotOwnedError:
    pass
assert r.lock("lock:api", timeout=1).acquire(blocking=False)

# Blocking acquire with a timeout waits for the holder's TTL.
start = time.monotonic()
waiter = r.lock("lock:api", timeout=5, blocking_timeout=3)
assert waiter.acquire(), "blocking acquire after the holder's TTL"
assert time.monotonic() - start > 0.3
waiter.release()

# The context manager.
with r.lock("lock:ctx", timeout=5) as l:
    assert l.owned()
assert r.get("lock:ctx") is None

# Scripts survive a SCRIPT FLUSH (NOSCRIPT recovery through SCRIPT LOAD).
r.script_flush()
lock = r.lock("lock:api2", timeout=5)
assert lock.acquire(blocking=False)
assert lock.extend(1)
lock.release()
try:
    lock.release()
    raise SystemExit("double release succeeded")
except LockError:
    pass
print("ok")
