#!/usr/bin/env python3
"""Generate src/command/table.rs from a live redis-server's COMMAND reply.

Usage:
    python3 tools/gen_command_table.py [HOST [PORT [OUTPUT]]]

HOST defaults to 127.0.0.1, PORT to 6379, OUTPUT to src/command/table.rs next to this
script's parent directory. The server is asked `COMMAND` over RESP2 (raw socket, no client
library, so nothing is reinterpreted) and `INFO server` for its version. The output is piped
through `rustfmt --edition 2024` when rustfmt is on PATH, so regenerating against the same
server gives a byte-identical file.

The generator refuses (exits non-zero) on anything it does not know how to represent: an
unknown command flag, key-spec flag, begin-search or find-keys type, or nested subcommands.
The types it fills in are hand-written in src/command/spec.rs.
"""

import os
import shutil
import socket
import subprocess
import sys

# Redis order (server.c addReplyFlagsForCommand); must match spec.rs FLAG_NAMES.
COMMAND_FLAGS = [
    ("write", "F_WRITE"),
    ("readonly", "F_READONLY"),
    ("denyoom", "F_DENYOOM"),
    ("module", "F_MODULE"),
    ("admin", "F_ADMIN"),
    ("pubsub", "F_PUBSUB"),
    ("noscript", "F_NOSCRIPT"),
    ("blocking", "F_BLOCKING"),
    ("loading", "F_LOADING"),
    ("stale", "F_STALE"),
    ("skip_monitor", "F_SKIP_MONITOR"),
    ("skip_slowlog", "F_SKIP_SLOWLOG"),
    ("asking", "F_ASKING"),
    ("fast", "F_FAST"),
    ("no_auth", "F_NO_AUTH"),
    ("may_replicate", "F_MAY_REPLICATE"),
    ("no_mandatory_keys", "F_NO_MANDATORY_KEYS"),
    ("no_async_loading", "F_NO_ASYNC_LOADING"),
    ("no_multi", "F_NO_MULTI"),
    ("movablekeys", "F_MOVABLEKEYS"),
    ("allow_busy", "F_ALLOW_BUSY"),
]

# Redis order (server.c addReplyFlagsForKeyArgs); must match spec.rs KEY_SPEC_FLAG_NAMES.
KEY_SPEC_FLAGS = [
    ("RO", "KS_RO"),
    ("RW", "KS_RW"),
    ("OW", "KS_OW"),
    ("RM", "KS_RM"),
    ("access", "KS_ACCESS"),
    ("update", "KS_UPDATE"),
    ("insert", "KS_INSERT"),
    ("delete", "KS_DELETE"),
    ("not_key", "KS_NOT_KEY"),
    ("incomplete", "KS_INCOMPLETE"),
    ("variable_flags", "KS_VARIABLE_FLAGS"),
]


class GenError(Exception):
    pass


# ---------------------------------------------------------------------------------------
# Minimal RESP2 client.


class Resp2:
    def __init__(self, host, port):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.rfile = self.sock.makefile("rb")

    def call(self, *args):
        parts = [b"*%d\r\n" % len(args)]
        for a in args:
            b = a.encode() if isinstance(a, str) else a
            parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
        self.sock.sendall(b"".join(parts))
        reply = self._read()
        if isinstance(reply, GenError):
            raise reply
        return reply

    def _line(self):
        line = self.rfile.readline()
        if not line.endswith(b"\r\n"):
            raise GenError("connection closed or bad RESP line: %r" % line)
        return line[:-2]

    def _read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return ("status", rest.decode())
        if kind == b"-":
            return GenError("server error: " + rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.rfile.read(n + 2)
            return data[:-2].decode()
        if kind == b"*":
            n = int(rest)
            if n < 0:
                return None
            return [self._read() for _ in range(n)]
        raise GenError("unexpected RESP type %r" % line)


def text(v):
    """Status and bulk strings both become str."""
    if isinstance(v, tuple) and v[0] == "status":
        return v[1]
    if isinstance(v, str):
        return v
    raise GenError("expected a string, got %r" % (v,))


def pairs(lst):
    """A RESP2-flattened map ([k1, v1, k2, v2, ...]) as an ordered list of (str, value)."""
    if not isinstance(lst, list) or len(lst) % 2:
        raise GenError("expected a flattened map, got %r" % (lst,))
    return [(text(lst[i]), lst[i + 1]) for i in range(0, len(lst), 2)]


# ---------------------------------------------------------------------------------------
# Rust emission.


def rust_str(s):
    out = ['"']
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append("\\u{%x}" % ord(ch))
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def str_slice(items):
    return "&[" + ", ".join(rust_str(i) for i in items) + "]"


def flag_expr(names, table, what, owner):
    known = dict(table)
    for n in names:
        if n not in known:
            raise GenError("%s: unknown %s flag %r" % (owner, what, n))
    # Emit in the canonical order so the file does not depend on reply order.
    consts = [const for (n, const) in table if n in names]
    if len(consts) != len(set(names)):
        raise GenError("%s: duplicate %s flags %r" % (owner, what, names))
    return " | ".join(consts) if consts else "0"


def key_spec_expr(raw, owner):
    fields = dict(pairs(raw))
    keys = [k for k, _ in pairs(raw)]
    expected = ["flags", "begin_search", "find_keys"]
    if "notes" in fields:
        expected = ["notes"] + expected
    if keys != expected:
        raise GenError("%s: unexpected key-spec fields %r" % (owner, keys))
    flags = [text(f) for f in fields["flags"]]
    notes = text(fields["notes"]) if "notes" in fields else ""
    if "notes" in fields and notes == "":
        # The encoder omits the notes field when notes == ""; an empty note would not
        # round-trip.
        raise GenError("%s: empty key-spec notes cannot be represented" % owner)

    bs = dict(pairs(fields["begin_search"]))
    bs_type, bs_spec = text(bs["type"]), dict(pairs(bs["spec"]))
    if bs_type == "index" and list(bs_spec) == ["index"]:
        begin = "BeginSearch::Index(%d)" % bs_spec["index"]
    elif bs_type == "keyword" and list(bs_spec) == ["keyword", "startfrom"]:
        begin = "BeginSearch::Keyword { keyword: %s, start_from: %d }" % (
            rust_str(text(bs_spec["keyword"])),
            bs_spec["startfrom"],
        )
    elif bs_type == "unknown" and not bs_spec:
        begin = "BeginSearch::Unknown"
    else:
        raise GenError("%s: unsupported begin_search %r" % (owner, bs))

    fk = dict(pairs(fields["find_keys"]))
    fk_type, fk_spec = text(fk["type"]), dict(pairs(fk["spec"]))
    if fk_type == "range" and list(fk_spec) == ["lastkey", "keystep", "limit"]:
        find = "FindKeys::Range { last_key: %d, step: %d, limit: %d }" % (
            fk_spec["lastkey"],
            fk_spec["keystep"],
            fk_spec["limit"],
        )
    elif fk_type == "keynum" and list(fk_spec) == ["keynumidx", "firstkey", "keystep"]:
        find = "FindKeys::Keynum { keynum_idx: %d, first_key: %d, step: %d }" % (
            fk_spec["keynumidx"],
            fk_spec["firstkey"],
            fk_spec["keystep"],
        )
    elif fk_type == "unknown" and not fk_spec:
        find = "FindKeys::Unknown"
    else:
        raise GenError("%s: unsupported find_keys %r" % (owner, fk))

    return (
        "KeySpec { flags: %s, notes: %s, begin: %s, find: %s }"
        % (flag_expr(flags, KEY_SPEC_FLAGS, "key-spec", owner), rust_str(notes), begin, find)
    )


def command_expr(entry, indent, is_sub, parent=None):
    if not isinstance(entry, list) or len(entry) != 10:
        raise GenError("unexpected COMMAND entry shape: %r" % (entry,))
    name, arity, flags, first, last, step, cats, tips, specs, subs = entry
    name = text(name)
    if name != name.lower():
        raise GenError("command name %r is not lowercase" % name)
    if is_sub and not name.startswith(parent + "|"):
        raise GenError("subcommand %r not named %s|..." % (name, parent))
    if is_sub and subs:
        raise GenError("%s: nested subcommands are not supported" % name)
    flags = [text(f) for f in flags]
    pad = " " * indent
    lines = [
        pad + "CommandSpec {",
        pad + "    name: %s," % rust_str(name),
        pad + "    arity: %d," % arity,
        pad + "    flags: %s," % flag_expr(flags, COMMAND_FLAGS, "command", name),
        pad + "    first_key: %d," % first,
        pad + "    last_key: %d," % last,
        pad + "    step: %d," % step,
        pad + "    acl_categories: %s," % str_slice([text(c) for c in cats]),
        pad + "    tips: %s," % str_slice([text(t) for t in tips]),
    ]
    if specs:
        lines.append(pad + "    key_specs: &[")
        for s in specs:
            lines.append(pad + "        " + key_spec_expr(s, name) + ",")
        lines.append(pad + "    ],")
    else:
        lines.append(pad + "    key_specs: &[],")
    if subs:
        lines.append(pad + "    subcommands: &[")
        for sub in sorted(subs, key=lambda s: text(s[0])):
            lines.extend(command_expr(sub, indent + 8, True, name))
        lines.append(pad + "    ],")
    else:
        lines.append(pad + "    subcommands: &[],")
    lines.append(pad + "},")
    return lines


def generate(host, port):
    conn = Resp2(host, port)
    info = conn.call("INFO", "server")
    version = "unknown"
    for line in info.splitlines():
        if line.startswith("redis_version:"):
            version = line.split(":", 1)[1].strip()
    commands = conn.call("COMMAND")
    commands = sorted(commands, key=lambda c: text(c[0]))
    names = [text(c[0]) for c in commands]
    if len(set(names)) != len(names):
        raise GenError("duplicate command names")

    total = len(commands) + sum(len(c[9]) for c in commands)
    out = [
        "// @generated by tools/gen_command_table.py -- DO NOT EDIT.",
        "//",
        "// Regenerate with: python3 tools/gen_command_table.py HOST PORT",
        "// Source: `COMMAND` (RESP2) of redis_version %s: %d commands, %d with subcommands."
        % (version, len(commands), total),
        "// Commands are sorted by name (binary search in `spec::lookup`), subcommands too;",
        "// Redis itself reports both in hash order. Types live in `spec.rs`.",
        "",
        "#[allow(unused_imports)]",
        "use super::spec::*;",
        "",
        "/// Redis version the table was generated from.",
        "pub const REDIS_VERSION: &str = %s;" % rust_str(version),
        "",
        "/// Every command the server reported, sorted by (lowercase) name.",
        "pub static COMMANDS: &[CommandSpec] = &[",
    ]
    for c in commands:
        out.extend(command_expr(c, 4, False))
    out.append("];")
    out.append("")
    return "\n".join(out)


def main(argv):
    host = argv[1] if len(argv) > 1 else "127.0.0.1"
    port = int(argv[2]) if len(argv) > 2 else 6379
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "src", "command", "table.rs")
    output = argv[3] if len(argv) > 3 else default_out
    try:
        src = generate(host, port)
    except (GenError, OSError) as e:
        print("gen_command_table: %s" % e, file=sys.stderr)
        return 1
    rustfmt = shutil.which("rustfmt")
    if rustfmt:
        res = subprocess.run(
            [rustfmt, "--edition", "2024", "--emit", "stdout", "--quiet"],
            input=src.encode(),
            capture_output=True,
        )
        if res.returncode != 0:
            print(res.stderr.decode(), file=sys.stderr)
            return 1
        src = res.stdout.decode()
    else:
        print("gen_command_table: rustfmt not found, output left unformatted", file=sys.stderr)
    with open(output, "w") as f:
        f.write(src)
    print("wrote %s" % os.path.normpath(output), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
