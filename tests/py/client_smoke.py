"""redis-py with its default settings (RESP3 via HELLO 3, CLIENT SETINFO) against shardis.

Usage: python3 client_smoke.py PORT. Exits non-zero on the first failure.
"""
import sys

import redis

port = int(sys.argv[1])

r = redis.Redis(port=port)  # library defaults
assert r.ping() is True
r.set("a", 1)
r.hset("h", mapping={"f1": "v1", "f2": "v2"})
assert r.get("a") == b"1", r.get("a")
r.mset({f"py:{i}": i for i in range(50)})
assert r.mget([f"py:{i}" for i in range(50)] + ["missing"]) == [str(i).encode() for i in range(50)] + [None]
assert r.delete(*[f"py:{i}" for i in range(25)]) == 25
assert r.exists("py:30", "py:0") == 1
r.hset("h", mapping={"f1": "v1", "f2": "v2"})
assert r.hgetall("h") == {b"f1": b"v1", b"f2": b"v2"}
r.sadd("s", "x", "y")
assert r.smembers("s") == {b"x", b"y"}
r.zadd("z", {"m": 1.5})
assert r.zscore("z", "m") == 1.5
assert r.incr("counter") == 1
r.set("ttl", "v", px=100000)
assert 0 < r.pttl("ttl") <= 100000
assert r.client_getname() is None
r.client_setname("pyclient")
assert r.client_getname() == "pyclient"  # redis-py decodes this reply
info = r.info()
assert info["redis_version"], info
assert "db0" in r.info("keyspace")
assert r.dbsize() > 0
keys = set(r.scan_iter(match="py:*", count=10))
assert keys == {f"py:{i}".encode() for i in range(25, 50)}, keys
with r.pipeline(transaction=False) as p:
    for i in range(100):
        p.set(f"pipe:{i}", i)
        p.get(f"pipe:{i}")
    out = p.execute()
assert out[1::2] == [str(i).encode() for i in range(100)]
# redis-py's default pipeline is a transaction (MULTI ... EXEC): served when
# every key is on one shard (hash tags), refused with CROSSSHARD otherwise.
with r.pipeline() as p:
    p.set("{cart:7}:items", 3)
    p.incrby("{cart:7}:items", 2)
    p.hset("{cart:7}:meta", "owner", "ann")
    p.get("{cart:7}:items")
    assert p.execute() == [True, 5, 1, b"5"]
try:
    with r.pipeline() as p:
        p.set("tx:a", 1)
        for i in range(50):
            p.set(f"tx:other:{i}", i)
        p.execute()
    raise SystemExit("a cross-shard transaction should be refused")
except redis.ResponseError as e:
    assert "CROSSSHARD" in str(e) or "EXECABORT" in str(e), e
assert r.get("tx:a") is None, "nothing of an aborted transaction ran"
# Pub/sub through the proxy, redis-py's own PubSub object.
ps = r.pubsub()
ps.subscribe("py-news")
assert ps.get_message(timeout=5)["type"] == "subscribe"
assert r.publish("py-news", "hi") == 1
msg = ps.get_message(timeout=5)
assert msg and msg["type"] == "message" and msg["data"] == b"hi", msg
ps.close()
try:
    r.execute_command("BGSAVE")
    raise SystemExit("BGSAVE should be refused")
except redis.ResponseError as e:
    assert "unsupported command" in str(e), e
assert r.ping()
lua = r.register_script("return redis.call('GET', KEYS[1])")
assert lua(keys=["a"]) == b"1"
# What test harnesses send first (issue 11): FUNCTION FLUSH, INFO fields,
# CONFIG SET; then functions as redis-py offers them (RESP3 here).
r.flushall()
assert r.function_flush() in (True, b"OK", "OK")
info = r.info()
assert info["arch_bits"] == 64 and info["cluster_enabled"] == 0, info
assert info["role"] == "master" and info["redis_mode"] == "standalone", info
assert "used_memory" in info and "loading" in info and "keyspace_hits" in info, info
assert set(r.info("server", "clients")) >= {"redis_version", "connected_clients"}
assert r.config_set("list-max-listpack-size", 64)
assert r.config_get("list-max-listpack-size") == {"list-max-listpack-size": "64"}
assert r.config_get("maxclients")["maxclients"].isdigit()
lib = "#!lua name=pylib\nredis.register_function('pyincr', function(keys, args) return redis.call('INCRBY', keys[1], args[1]) end)"
assert r.function_load(lib) in (b"pylib", "pylib")
assert r.function_load(lib, replace=True) in (b"pylib", "pylib")
assert r.fcall("pyincr", 1, "fn:a", 4) == 4
assert r.fcall("pyincr", 1, "fn:a", 1) == 5
libs = r.function_list()
assert len(libs) == 1, libs
assert r.function_delete("pylib") in (True, b"OK", "OK")
assert r.function_list() == []
r.set("a", 1)
r.hset("h", mapping={"f1": "v1", "f2": "v2"})

r2 = redis.Redis(port=port, protocol=2, decode_responses=True)
assert r2.get("a") == "1"
assert r2.hgetall("h") == {"f1": "v1", "f2": "v2"}
print("redis-py", redis.__version__, "OK")
