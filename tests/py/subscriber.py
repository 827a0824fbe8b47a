"""redis-py's classic pub/sub against shardis, RESP2 and RESP3: subscribe and
psubscribe, messages from another client heard once each and in order, the
pubsub connection's own PING and its commands in RESP3 (SET/GET of keys on
every shard on the subscribed connection), unsubscribe, reset.

Usage: python3 subscriber.py PORT. Exits non-zero on failure.
"""
import sys
import time

import redis

port = int(sys.argv[1])


def next_message(p, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = p.get_message(timeout=0.1)
        if m is not None:
            return m
    raise AssertionError("no message within the timeout")


for protocol in (2, 3):
    r = redis.Redis(port=port, protocol=protocol, decode_responses=True)
    p = r.pubsub()
    p.subscribe("py:a", "py:b")
    p.psubscribe("py:p*")
    got = [next_message(p) for _ in range(3)]
    assert [m["type"] for m in got] == ["subscribe", "subscribe", "psubscribe"], got
    assert [m["data"] for m in got] == [1, 2, 3], got
    for i in range(200):
        assert r.publish("py:a", f"m{i}") == 1
    r.publish("py:pq", "pattern")
    msgs = [next_message(p) for _ in range(201)]
    assert [m["data"] for m in msgs[:200]] == [f"m{i}" for i in range(200)], msgs[:3]
    assert msgs[200]["type"] == "pmessage" and msgs[200]["channel"] == "py:pq", msgs[200]
    if protocol == 2:
        p.ping()
        pong = next_message(p)
        assert pong["type"] == "pong", pong
    else:
        # (redis-py reads RESP3's +PONG as a message, against Redis too.)
        # A RESP3 subscriber's own commands run where their keys live.
        conn = p.connection
        conn.send_command("PING")
        assert conn.read_response() == "PONG"
        for i in range(30):
            conn.send_command("SET", f"py:k{i}", str(i))
            assert conn.read_response() == "OK"
            conn.send_command("GET", f"py:k{i}")
            assert conn.read_response() == str(i)
        # Read back from another connection: each key on its ring shard.
        assert [r.get(f"py:k{i}") for i in range(30)] == [str(i) for i in range(30)]
    p.unsubscribe("py:a", "py:b")
    p.punsubscribe()
    got = [next_message(p) for _ in range(3)]
    assert [m["type"] for m in got] == ["unsubscribe", "unsubscribe", "punsubscribe"], got
    assert got[-1]["data"] == 0, got
    assert r.publish("py:a", "nobody") == 0
    p.reset()
    r.close()
print("ok")
