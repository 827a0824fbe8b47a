"""redis-py logging in as a configured user (AUTH / HELLO 3 AUTH user pass).

Usage: python3 users.py PORT. Exits non-zero on the first failure.
"""
import sys

import redis

port = int(sys.argv[1])

for protocol in (2, 3):
    r = redis.Redis(port=port, username="writer", password="wpass", protocol=protocol)
    assert r.ping() is True
    assert r.acl_whoami() == "writer" or r.acl_whoami() == b"writer", r.acl_whoami()
    r.set("py:user", "v")
    assert r.get("py:user") == b"v"
    try:
        r.config_set("maxmemory", "0")
        raise SystemExit("CONFIG SET allowed to a read-write user")
    except redis.exceptions.NoPermissionError as e:
        assert "no permissions to run the 'config|set' command" in str(e), e

    ro = redis.Redis(port=port, username="reader", password="rpass", protocol=protocol)
    assert ro.get("py:user") == b"v"
    try:
        ro.set("py:user", "x")
        raise SystemExit("SET allowed to a read-only user")
    except redis.exceptions.NoPermissionError as e:
        assert "no permissions to run the 'set' command" in str(e), e


# Last: redis-py retries a failed login several times, which spends the
# proxy's failed-login budget for this IP (10 in 10 s).
bad = redis.Redis(port=port, username="writer", password="nope")
try:
    bad.ping()
    raise SystemExit("a wrong password was accepted")
except redis.exceptions.AuthenticationError as e:
    assert "invalid username-password pair" in str(e), e


print("ok")
