"""redis-py's sharded pub/sub against shardis: PubSub.ssubscribe on channels
that land on different shards, spublish from another client, every message
heard once; then sunsubscribe. RESP2 and RESP3.

Usage: python3 sharded_pubsub.py PORT. Exits non-zero on failure.
"""
import sys
import time

import redis

port = int(sys.argv[1])
CHANNELS = [f"py:shard:{i}" for i in range(12)]


def next_message(p, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = p.get_sharded_message(timeout=0.1)
        if m is not None:
            return m
    raise AssertionError("no message within the timeout")


for protocol in (2, 3):
    r = redis.Redis(port=port, protocol=protocol, decode_responses=True)
    p = r.pubsub()
    p.ssubscribe(*CHANNELS)
    confirmed = [next_message(p) for _ in CHANNELS]
    assert [m["type"] for m in confirmed] == ["ssubscribe"] * len(CHANNELS), confirmed
    assert sorted(m["channel"] for m in confirmed) == sorted(CHANNELS), confirmed
    assert [m["data"] for m in confirmed] == list(range(1, len(CHANNELS) + 1)), confirmed
    assert sorted(r.pubsub_shardchannels("py:shard:*")) == sorted(CHANNELS)
    assert r.pubsub_shardnumsub(CHANNELS[0], CHANNELS[5]) == [(CHANNELS[0], 1), (CHANNELS[5], 1)]
    publisher = redis.Redis(port=port, protocol=protocol, decode_responses=True)
    for i, ch in enumerate(CHANNELS):
        assert publisher.spublish(ch, f"m{i}") == 1, ch
    heard = [next_message(p) for _ in CHANNELS]
    # Each once; channels on different shards come over different backend
    # connections, so their relative order is not kept (as in Redis Cluster).
    assert sorted((m["type"], m["channel"], m["data"]) for m in heard) == sorted(
        ("smessage", ch, f"m{i}") for i, ch in enumerate(CHANNELS)
    ), heard
    # Within one channel the order is the publisher's.
    for i in range(20):
        publisher.spublish(CHANNELS[3], f"seq{i}")
    seq = [next_message(p)["data"] for _ in range(20)]
    assert seq == [f"seq{i}" for i in range(20)], seq
    p.sunsubscribe()
    gone = [next_message(p) for _ in CHANNELS]
    assert sorted(m["data"] for m in gone) == list(range(len(CHANNELS))), gone
    assert publisher.spublish(CHANNELS[0], "nobody") == 0
    p.close()
    print("ok, protocol", protocol)
