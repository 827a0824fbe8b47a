//! A dense id for every command and subcommand the proxy knows (the Redis
//! table, CLIENT SETINFO, `SHARDIS.*`), so an ACL permission check is one bit
//! test ([`crate::acl`]). A container command's id is followed by its
//! subcommands' ids. Ids are computed from a spec's place in its static
//! slice (pointer arithmetic, no search). The same ids index the `/metrics`
//! per-command counters ([`crate::counters`]).

use std::sync::OnceLock;

use super::spec::CommandSpec;
use super::table::COMMANDS;
use super::{CLIENT_SETINFO, PROXY_COMMANDS};

/// `BASE[i]`: the id of `COMMANDS[i]`; the last entry is the first id after
/// the table.
fn base() -> &'static [u16] {
    static BASE: OnceLock<Vec<u16>> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut v = Vec::with_capacity(COMMANDS.len() + 1);
        let mut next = 0u16;
        for c in COMMANDS {
            v.push(next);
            next += 1 + c.subcommands.len() as u16;
        }
        v.push(next);
        v
    })
}

/// Where `spec` sits in `slice`, if it is one of its elements.
fn position(slice: &'static [CommandSpec], spec: &CommandSpec) -> Option<usize> {
    let size = std::mem::size_of::<CommandSpec>();
    let start = slice.as_ptr() as usize;
    let p = spec as *const CommandSpec as usize;
    let off = p.checked_sub(start)?;
    (off % size == 0 && off / size < slice.len()).then_some(off / size)
}

/// How many ids there are.
pub fn count() -> usize {
    base()[COMMANDS.len()] as usize + 1 + PROXY_COMMANDS.len()
}

/// The id of a top-level command (`parent`) or, with `sub`, of its
/// subcommand. `None` for a spec from nowhere in the table.
pub fn id(parent: &'static CommandSpec, sub: Option<&'static CommandSpec>) -> Option<usize> {
    if std::ptr::eq(sub.unwrap_or(parent), &CLIENT_SETINFO) {
        return Some(base()[COMMANDS.len()] as usize);
    }
    if let Some(i) = position(&PROXY_COMMANDS, parent) {
        return Some(base()[COMMANDS.len()] as usize + 1 + i);
    }
    let top = base()[position(COMMANDS, parent)?] as usize;
    match sub {
        None => Some(top),
        Some(s) => Some(top + 1 + position(parent.subcommands, s)?),
    }
}

/// Where each container's subcommands are: (address of the first, how
/// many, the id of the first).
fn subs() -> &'static [(usize, usize, usize)] {
    static SUBS: OnceLock<Vec<(usize, usize, usize)>> = OnceLock::new();
    SUBS.get_or_init(|| {
        let base = base();
        COMMANDS
            .iter()
            .enumerate()
            .filter(|(_, c)| !c.subcommands.is_empty())
            .map(|(i, c)| {
                (
                    c.subcommands.as_ptr() as usize,
                    c.subcommands.len(),
                    base[i] as usize + 1,
                )
            })
            .collect()
    })
}

/// The id of a spec the lookup returned (a command or subcommand of the
/// table, CLIENT SETINFO, a proxy command), from its address alone: a
/// top-level command is one range check; a subcommand, a scan of the
/// containers' ranges. `None` for a spec from nowhere.
#[inline]
pub fn of_spec(spec: &CommandSpec) -> Option<usize> {
    if let Some(i) = position(COMMANDS, spec) {
        return Some(base()[i] as usize);
    }
    let size = std::mem::size_of::<CommandSpec>();
    let a = spec as *const CommandSpec as usize;
    for &(start, n, first) in subs() {
        if a >= start && a < start + n * size {
            return Some(first + (a - start) / size);
        }
    }
    if std::ptr::eq(spec, &CLIENT_SETINFO) {
        return Some(base()[COMMANDS.len()] as usize);
    }
    position(&PROXY_COMMANDS, spec).map(|i| base()[COMMANDS.len()] as usize + 1 + i)
}

/// Every command with its id; a container's subcommands (`Some(parent id)`)
/// right after it.
pub fn each(mut f: impl FnMut(usize, &'static CommandSpec, Option<usize>)) {
    let base = base();
    for (i, c) in COMMANDS.iter().enumerate() {
        let top = base[i] as usize;
        f(top, c, None);
        for (j, s) in c.subcommands.iter().enumerate() {
            f(top + 1 + j, s, Some(top));
        }
    }
    let after = base[COMMANDS.len()] as usize;
    f(after, &CLIENT_SETINFO, None);
    for (i, c) in PROXY_COMMANDS.iter().enumerate() {
        f(after + 1 + i, c, None);
    }
}

/// The id of a command named as in ACL rules: `get`, `config|get`.
pub fn by_name(name: &str) -> Option<(usize, &'static CommandSpec)> {
    let (parent, sub) = match name.split_once('|') {
        Some((p, s)) => (p, Some(s)),
        None => (name, None),
    };
    let p = super::spec::lookup(parent.as_bytes()).or_else(|| super::proxy_command(parent.as_bytes()))?;
    match sub {
        None => Some((id(p, None)?, p)),
        Some(s) if p.name == "client" && s.eq_ignore_ascii_case("setinfo") => {
            Some((id(p, Some(&CLIENT_SETINFO))?, &CLIENT_SETINFO))
        }
        Some(s) => {
            let spec = super::spec::lookup_sub(p, s.as_bytes())?;
            Some((id(p, Some(spec))?, spec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_dense_and_unique() {
        let mut seen = vec![false; count()];
        each(|i, spec, parent| {
            assert!(!seen[i], "{}", spec.name);
            seen[i] = true;
            match parent {
                None => {}
                Some(p) => assert!(p < i),
            }
            assert_eq!(by_name(spec.name).map(|(id, _)| id), Some(i), "{}", spec.name);
            assert_eq!(of_spec(spec), Some(i), "{}", spec.name);
        });
        assert!(seen.iter().all(|&s| s));
    }

    #[test]
    fn lookup_ids_agree() {
        for line in [
            "get a",
            "config get x",
            "client setinfo lib-name x",
            "shardis.reload",
            "acl cat",
        ] {
            let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
            let l = crate::command::lookup(&args).unwrap();
            assert_eq!(Some(l.id()), by_name(l.spec.name).map(|(id, _)| id), "{line}");
        }
    }
}
