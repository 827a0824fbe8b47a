//! The command reference (`docs/commands.md`), generated from the command
//! table and the routes [`super::route_of`] gives: for every Redis 7.0
//! command and subcommand, and the proxy's own, how shardis serves it:
//! answered by the proxy, routed by key, split and merged, broadcast, or
//! refused with the error a client gets. `tests/command_table.rs` checks the
//! file against [`markdown`], so the reference cannot drift from the code
//! (`SHARDIS_BLESS=1` rewrites it).

use super::spec::CommandSpec;
use super::table::COMMANDS;
use super::{Broadcast, CLIENT_SETINFO, Fanout, Local, PROXY_COMMANDS, Route, ShardPubSub, TxCommand, route_of};

/// The whole reference, as markdown.
pub fn markdown() -> String {
    let mut specs: Vec<&CommandSpec> = Vec::new();
    for c in COMMANDS {
        if c.subcommands.is_empty() || c.name == "command" {
            specs.push(c);
        }
        specs.extend(c.subcommands.iter());
    }
    specs.push(&CLIENT_SETINFO);
    specs.extend(PROXY_COMMANDS.iter());
    specs.sort_by_key(|s| s.name);

    let mut counts = [0usize; 5];
    let mut rows = String::new();
    for spec in specs {
        let route = route_of(spec, &[spec.name.as_bytes()]);
        let (class, how) = describe(spec, route);
        counts[class as usize] += 1;
        rows.push_str(&format!(
            "| `{}` | {} | {} |\n",
            spec.name.replace('|', " ").to_ascii_uppercase(),
            CLASS_NAMES[class as usize],
            how
        ));
    }
    let mut out = String::from(
        "# Commands\n\n\
         How shardis serves every command of Redis 7.0 (and CLIENT SETINFO, and its own `SHARDIS.*`).\n\
         Generated from the command table by `shardis::command::doc::markdown`; `tests/command_table.rs`\n\
         fails when this file differs (`SHARDIS_BLESS=1 cargo test --test command_table` rewrites it).\n\n\
         - **proxy**: answered by the proxy itself;\n\
         - **routed**: sent to the shard that owns its keys (or channel); keys on different shards get\n  \
         `-CROSSSHARD keys in request don't hash to the same shard`, except for the commands that run\n  \
         across shards (`[crossshard] commands`, README \"Cross-shard commands\": SINTER, SUNIONSTORE,\n  \
         ZUNION, PFCOUNT, LCS, COPY, BITOP, SORT ... STORE, RENAME, SMOVE, LMOVE, MSETNX ...);\n\
         - **split**: split per shard and the replies merged;\n\
         - **broadcast**: sent to every shard (or walked shard by shard) and merged;\n\
         - **refused**: the error the client gets; the connection stays open.\n\n",
    );
    out.push_str(&format!(
        "{} proxy, {} routed, {} split, {} broadcast, {} refused.\n\n",
        counts[0], counts[1], counts[2], counts[3], counts[4]
    ));
    out.push_str("| command | served | how |\n|---|---|---|\n");
    out.push_str(&rows);
    out
}

#[derive(Clone, Copy)]
enum Class {
    Proxy,
    Routed,
    Split,
    Broadcast,
    Refused,
}

const CLASS_NAMES: [&str; 5] = ["proxy", "routed", "split", "broadcast", "refused"];

fn describe(spec: &CommandSpec, route: Route) -> (Class, String) {
    use Class as C;
    let s = |c: Class, t: &str| (c, t.to_string());
    match route {
        Route::Local(Local::Client) => s(C::Proxy, "for the proxy's own clients"),
        Route::Local(Local::Unsubscribe) => s(
            C::Proxy,
            "outside subscribed mode one confirmation per channel; a subscriber's goes down its pipe",
        ),
        Route::Local(Local::Monitor) => s(C::Proxy, "every command through this proxy"),
        Route::Local(Local::Slowlog) => s(C::Proxy, "the proxy's own slow log"),
        Route::Local(Local::Latency) => s(C::Proxy, "the proxy records no latency events"),
        Route::Local(Local::Info) => s(C::Proxy, "the proxy's sections, the shards' merged"),
        Route::Local(Local::Select) => s(C::Proxy, "database 0 only"),
        Route::Local(_) => s(C::Proxy, ""),
        Route::Keyed if matches!(spec.name, "xread" | "xreadgroup") => {
            s(C::Routed, "by key; with BLOCK on a connection of its own")
        }
        Route::Keyed
            if matches!(
                spec.name,
                "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro"
            ) =>
        {
            s(C::Routed, "by its KEYS; with none, the first shard")
        }
        Route::Keyed if spec.name == "copy" => s(C::Routed, "by key; with DB refused (database 0 only)"),
        Route::Keyed => s(C::Routed, "by key"),
        Route::Blocking => s(C::Routed, "by key, on a connection of its own while it blocks"),
        Route::PubSub => s(C::Routed, "to the pub/sub shard (the first backend)"),
        Route::Subscribe => s(
            C::Routed,
            "to a connection of the client's own on the pub/sub shard; the client is still served",
        ),
        Route::ShardPubSub(ShardPubSub::Channels) => s(C::Broadcast, "the union over the shards"),
        Route::ShardPubSub(ShardPubSub::Numsub) => s(C::Split, "each channel's count from its shard"),
        Route::ShardPubSub(ShardPubSub::Subscribe) => s(C::Routed, "a connection of its own on each channel's shard"),
        Route::ShardPubSub(_) => s(C::Routed, "by channel"),
        Route::Fanout(Fanout::Mget) => s(C::Split, "values in key order"),
        Route::Fanout(Fanout::Mset) => s(C::Split, "OK when every shard's part is"),
        Route::Fanout(Fanout::SumKeys) => s(C::Split, "counts summed"),
        Route::Broadcast(b) => s(
            C::Broadcast,
            match b {
                Broadcast::Dbsize => "summed",
                Broadcast::AllOk => "OK when every shard answers OK",
                Broadcast::Keys => "the shards' keys together",
                Broadcast::Scan => "shard after shard; the cursor names the shard",
                Broadcast::RandomKey => "a key from a shard that has one",
                Broadcast::ScriptExists => "1 where every shard has the script",
                Broadcast::First => "the first shard's reply",
                Broadcast::Agree => "every shard must agree, else the shards are named",
                Broadcast::AdminAgree => "every shard must agree, else the shards are named; admin only",
                Broadcast::Kill => "OK where a shard had one to kill",
                Broadcast::FunctionList => "libraries merged; one on some shards only is reported",
                Broadcast::FunctionStats => {
                    "the script running on any shard; counts when every shard agrees, else the shards are named"
                }
                Broadcast::ConfigGet => "the shards' values, and the proxy's own parameters",
            },
        ),
        Route::Transaction(TxCommand::Watch) => s(C::Routed, "a connection of its own on the watched keys' shard"),
        Route::Transaction(_) => s(C::Routed, "a transaction on the shard of its keys"),
        Route::Proxy(_) => s(C::Proxy, "the proxy's own command (README)"),
        Route::Refuse(r) => (C::Refused, format!("`-{}`", r.error(spec.name).to_string().trim_end())),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_has_a_row() {
        let md = super::markdown();
        for c in super::COMMANDS {
            let name = c.name.to_ascii_uppercase();
            assert!(md.contains(&format!("| `{name}")), "{name}");
        }
        assert!(md.contains("| `GET` | routed | by key |"));
        assert!(md.contains("| `DEBUG` | refused |"));
    }
}
