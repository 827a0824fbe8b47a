"""redis-py's optimistic transaction() against shardis: 4 threads increment one
counter 50 times each with WATCH / GET / MULTI / SET / EXEC; a lost update
would leave it below 200.

Usage: python3 watch_counter.py PORT. Exits non-zero on failure.
"""
import sys
import threading

import redis

port = int(sys.argv[1])
KEY = "py:watched:counter"
redis.Redis(port=port).delete(KEY)
errors = []
retries = [0]


def worker():
    r = redis.Redis(port=port)

    def incr(pipe):
        v = int(pipe.get(KEY) or 0)
        pipe.multi()
        pipe.set(KEY, v + 1)

    try:
        for _ in range(50):
            r.transaction(incr, KEY)
    except Exception as e:  # reported below
        errors.append(repr(e))


threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
assert not errors, errors
v = int(redis.Redis(port=port).get(KEY))
assert v == 200, v
print("ok", v)
