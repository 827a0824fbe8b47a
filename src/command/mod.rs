//! The command table and the proxy's routing policy.
//!
//! [`table`] is generated from a live Redis 7.0 `COMMAND` (arity, flags, key
//! specs); [`keys`] finds the key arguments of any command from its key
//! specs; [`info`] re-encodes table entries as `COMMAND INFO` replies. This
//! file decides, per command, how the proxy serves it: see [`Route`].

pub mod doc;
pub mod ids;
pub mod info;
mod key_procs;
pub mod keys;
mod route_cache;
pub mod spec;
pub mod table;

use spec::{BeginSearch, CommandSpec, F_BLOCKING, F_LOADING, F_NOSCRIPT, F_PUBSUB, F_STALE, FindKeys};

use crate::error::ReplyError;

/// How the proxy serves a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Answered by the proxy itself.
    Local(Local),
    /// Sent to the shard that owns its keys; refused with CROSSSHARD when the
    /// keys live on different shards. Keyless scripts go to the first shard.
    Keyed,
    /// A blocking command (BLPOP, XREAD BLOCK ...): routed like [`Route::Keyed`],
    /// but sent on a connection of its own, since it may wait for minutes.
    Blocking,
    /// PUBLISH, PUBSUB CHANNELS/NUMSUB/NUMPAT: sent to the pub/sub shard
    /// (the first backend).
    PubSub,
    /// SUBSCRIBE / PSUBSCRIBE: sent on a connection of the client's own to
    /// the pub/sub shard (its UNSUBSCRIBEs follow them there).
    Subscribe,
    /// Sharded pub/sub: routed by the channel's place on the ring.
    ShardPubSub(ShardPubSub),
    /// Split per shard and merged.
    Fanout(Fanout),
    /// Sent to every shard (or, for SCAN, to the shard the cursor names).
    Broadcast(Broadcast),
    /// MULTI, EXEC, DISCARD, WATCH, UNWATCH: a transaction step (see [`crate::transaction`]).
    Transaction(TxCommand),
    /// `SHARDIS.*`: the proxy's own commands.
    Proxy(ProxyCommand),
    /// Refused with an error; the connection stays open.
    Refuse(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxCommand {
    Multi,
    Exec,
    Discard,
    /// WATCH: the client gets a connection of its own on the keys' shard.
    Watch,
    /// UNWATCH (queued like any command inside MULTI).
    Unwatch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyCommand {
    /// `SHARDIS.ADMIN <password>`: unlocks the admin commands.
    Admin,
    /// `SHARDIS.RELOAD [FORCE]`: re-reads the configuration file.
    Reload,
    /// `SHARDIS.LOCK key token ms`: a lock acquisition with a fencing token.
    Lock,
    /// `SHARDIS.FENCE key token`: the fencing token of a live grant.
    Fence,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    Ping,
    Echo,
    Quit,
    Hello,
    Auth,
    Select,
    Time,
    Reset,
    Info,
    Command,
    Client,
    /// UNSUBSCRIBE / PUNSUBSCRIBE on a connection that is not subscribed:
    /// one confirmation per channel, from the proxy (a shared backend
    /// connection would answer several frames to one request).
    Unsubscribe,
    /// MONITOR: the connection receives every command through the proxy.
    Monitor,
    /// SLOWLOG: the proxy's own slow log.
    Slowlog,
    /// LATENCY: the proxy records no latency events; answered empty.
    Latency,
    /// ACL WHOAMI / USERS / CAT / LIST / DRYRUN: the users of proxy.toml.
    Acl,
}

/// The sharded pub/sub commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardPubSub {
    /// SSUBSCRIBE: a connection of the client's own on each channel's shard.
    Subscribe,
    /// SUNSUBSCRIBE.
    Unsubscribe,
    /// SPUBLISH: to the channel's shard.
    Publish,
    /// PUBSUB SHARDCHANNELS: the union over every shard.
    Channels,
    /// PUBSUB SHARDNUMSUB: each channel's count from its shard.
    Numsub,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fanout {
    /// MGET: values in key order.
    Mget,
    /// MSET: OK when every shard said OK.
    Mset,
    /// DEL, UNLINK, EXISTS, TOUCH: integer replies summed.
    SumKeys,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broadcast {
    /// DBSIZE: summed.
    Dbsize,
    /// FLUSHDB, FLUSHALL, SCRIPT FLUSH: OK when every shard said OK.
    AllOk,
    /// KEYS: concatenated.
    Keys,
    /// SCAN: one shard at a time, the cursor says which.
    Scan,
    /// RANDOMKEY: a key from any shard that has one.
    RandomKey,
    /// SCRIPT EXISTS: a script exists when every shard has it.
    ScriptExists,
    /// SCRIPT LOAD, FUNCTION DUMP: every shard runs it; the first reply is
    /// sent.
    First,
    /// FUNCTION LOAD/DELETE/FLUSH/RESTORE: every shard must give the same
    /// reply; otherwise an error names the shards that failed.
    Agree,
    /// CONFIG SET/RESETSTAT/REWRITE: as [`Broadcast::Agree`], and only for
    /// an admin when an `admin_password` is configured.
    AdminAgree,
    /// FUNCTION KILL, SCRIPT KILL: OK when any shard killed a script.
    Kill,
    /// FUNCTION LIST: merged by library name; a library missing on some
    /// shard is reported.
    FunctionList,
    /// FUNCTION STATS: the script running on any shard; the engines'
    /// counts when every shard agrees, else the shards are named.
    FunctionStats,
    /// CONFIG GET: the shards' answer with the proxy's own `maxclients` and
    /// `timeout`.
    ConfigGet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Commands a proxy in front of independent shards cannot offer.
    Unsupported,
    /// Blocking commands without keys (WAIT ...): no shard to run on.
    Blocking,
    /// CLIENT TRACKING: invalidation messages cannot be delivered.
    Tracking,
    /// Refused for the reason given.
    Because(&'static str),
}

impl Refusal {
    pub fn error(self, name: &str) -> ReplyError {
        let name = name.replace('|', " ");
        ReplyError::err(match self {
            Refusal::Unsupported => format!("unsupported command '{name}' in shardis"),
            Refusal::Blocking => format!(
                "unsupported command '{name}' in shardis: it blocks without naming a key, so no shard can serve it"
            ),
            Refusal::Tracking => "CLIENT TRACKING is not supported by shardis: invalidation messages would come from \
                 every shard on connections the client does not own, and the proxy does not forward them; \
                 without them a client-side cache would serve stale values"
                .to_string(),
            Refusal::Because(why) => format!("unsupported command '{name}' in shardis: {why}"),
        })
    }
}

/// The outcome of looking a request up.
#[derive(Debug, Clone, Copy)]
pub struct Lookup {
    /// The spec that applies (the subcommand's, for container commands).
    pub spec: &'static CommandSpec,
    pub route: Route,
    /// The top-level command (`spec` itself, or its container).
    pub parent: &'static CommandSpec,
}

impl Lookup {
    /// The command's id ([`ids`]): what an ACL permission check tests.
    /// Computed on demand: unrestricted users never need it.
    pub fn id(&self) -> usize {
        ids::id(
            self.parent,
            (!std::ptr::eq(self.spec, self.parent)).then_some(self.spec),
        )
        .unwrap_or(0)
    }
}

/// Finds the command, checks its arity like Redis and picks its route.
/// `Err` is the error reply to send.
pub fn lookup(args: &[&[u8]]) -> Result<Lookup, ReplyError> {
    let Some(name) = args.first() else {
        return Err(ReplyError::err("empty command"));
    };
    let Some(parent) = spec::lookup(name).or_else(|| proxy_command(name)) else {
        return Err(unknown_command(args));
    };
    let mut spec = parent;
    // A bare `COMMAND` is a command of its own; every other container needs a subcommand.
    let bare_command = spec.name == "command" && args.len() == 1;
    if !spec.subcommands.is_empty() && !bare_command {
        match args.get(1) {
            Some(sub) if spec.name == "client" && sub.eq_ignore_ascii_case(b"setinfo") => spec = &CLIENT_SETINFO,
            Some(sub) => match spec::lookup_sub(spec, sub) {
                Some(s) => spec = s,
                None => {
                    return Err(ReplyError::err(format!(
                        "unknown subcommand '{}'. Try {} HELP.",
                        printable(sub, 128),
                        spec.name.to_ascii_uppercase()
                    )));
                }
            },
            None => return Err(ReplyError::wrong_arity(spec.name)),
        }
    }
    let n = args.len() as i64;
    let arity = spec.arity as i64;
    if (arity > 0 && n != arity) || (arity < 0 && n < -arity) {
        return Err(ReplyError::wrong_arity(spec.name));
    }
    Ok(Lookup {
        spec,
        route: route_cache::route(spec, args),
        parent,
    })
}

fn route_of(spec: &CommandSpec, args: &[&[u8]]) -> Route {
    use Broadcast as B;
    use Local as L;
    use Refusal as R;
    match spec.name {
        "ping" => Route::Local(L::Ping),
        "echo" => Route::Local(L::Echo),
        "quit" => Route::Local(L::Quit),
        "hello" => Route::Local(L::Hello),
        "auth" => Route::Local(L::Auth),
        "select" => Route::Local(L::Select),
        "time" => Route::Local(L::Time),
        "reset" => Route::Local(L::Reset),
        "info" => Route::Local(L::Info),
        "command" => Route::Local(L::Command),
        n if n.starts_with("command|") => Route::Local(L::Command),
        "client|setname" | "client|getname" | "client|id" | "client|setinfo" | "client|info" | "client|help" => {
            Route::Local(L::Client)
        }
        // The proxy's own clients, as Redis answers for its own.
        "client|list" | "client|kill" | "client|pause" | "client|unpause" | "client|no-evict" | "client|reply" => {
            Route::Local(L::Client)
        }
        "client|trackinginfo" => Route::Local(L::Client),
        "monitor" => Route::Local(L::Monitor),
        "acl|whoami" | "acl|users" | "acl|cat" | "acl|list" | "acl|dryrun" => Route::Local(L::Acl),
        n if n.starts_with("acl|") => Route::Refuse(R::Because(why::ACL)),
        n if n.starts_with("slowlog|") => Route::Local(L::Slowlog),
        n if n.starts_with("latency|") => Route::Local(L::Latency),
        "memory|purge" => Route::Broadcast(B::AllOk),
        "memory|help" | "object|help" => Route::Broadcast(B::First),
        "memory|stats" | "memory|doctor" | "memory|malloc-stats" => Route::Refuse(R::Because(why::MEMORY)),
        "debug" => Route::Refuse(R::Because(why::DEBUG)),
        "wait" => Route::Refuse(R::Because(why::WAIT)),
        "move" | "swapdb" => Route::Refuse(R::Because(why::DB)),
        "copy" if has_arg(args, b"db") => Route::Refuse(R::Because(why::DB)),
        "migrate" => Route::Refuse(R::Because(why::MIGRATE)),
        "replicaof" | "slaveof" | "sync" | "psync" | "failover" => Route::Refuse(R::Because(why::REPLICATION)),
        "save" | "bgsave" | "bgrewriteaof" => Route::Refuse(R::Because(why::PERSISTENCE)),
        "shutdown" => Route::Refuse(R::Because(why::SHUTDOWN)),
        "lastsave" => Route::Refuse(R::Because(why::PERSISTENCE)),
        "replconf" => Route::Refuse(R::Because(why::REPLICATION)),
        "role" => Route::Refuse(R::Because(why::ROLE)),
        n if n.starts_with("cluster|") || matches!(n, "asking" | "readonly" | "readwrite") => {
            Route::Refuse(R::Because(why::CLUSTER))
        }
        "client|caching" | "client|getredir" => Route::Refuse(R::Because(why::CACHING)),
        "client|unblock" => Route::Refuse(R::Because(why::UNBLOCK)),
        "module|load" | "module|loadex" | "module|unload" => Route::Refuse(R::Because(why::MODULES)),
        "script|debug" => Route::Refuse(R::Because(why::SCRIPT_DEBUG)),
        "pubsub|help" | "script|help" | "xgroup|help" | "xinfo|help" | "module|help" | "module|list" | "lolwut"
        | "pfselftest" => Route::Broadcast(B::First),
        "mget" => Route::Fanout(Fanout::Mget),
        "mset" => Route::Fanout(Fanout::Mset),
        "del" | "unlink" | "exists" | "touch" => Route::Fanout(Fanout::SumKeys),
        "dbsize" => Route::Broadcast(B::Dbsize),
        "flushdb" | "flushall" | "script|flush" => Route::Broadcast(B::AllOk),
        "keys" => Route::Broadcast(B::Keys),
        "scan" => Route::Broadcast(B::Scan),
        "randomkey" => Route::Broadcast(B::RandomKey),
        "script|exists" => Route::Broadcast(B::ScriptExists),
        "script|load" | "function|dump" | "function|help" | "config|help" => Route::Broadcast(B::First),
        "function|load" | "function|delete" | "function|flush" | "function|restore" => Route::Broadcast(B::Agree),
        "config|set" | "config|resetstat" | "config|rewrite" => Route::Broadcast(B::AdminAgree),
        "function|kill" | "script|kill" => Route::Broadcast(B::Kill),
        "function|list" => Route::Broadcast(B::FunctionList),
        "function|stats" => Route::Broadcast(B::FunctionStats),
        "config|get" => Route::Broadcast(B::ConfigGet),
        "multi" => Route::Transaction(TxCommand::Multi),
        "exec" => Route::Transaction(TxCommand::Exec),
        "discard" => Route::Transaction(TxCommand::Discard),
        "watch" => Route::Transaction(TxCommand::Watch),
        "unwatch" => Route::Transaction(TxCommand::Unwatch),
        "shardis.admin" => Route::Proxy(ProxyCommand::Admin),
        "shardis.reload" => Route::Proxy(ProxyCommand::Reload),
        "shardis.lock" => Route::Proxy(ProxyCommand::Lock),
        "shardis.fence" => Route::Proxy(ProxyCommand::Fence),
        "xread" | "xreadgroup" if !has_arg(args, b"block") => Route::Keyed,
        "subscribe" | "psubscribe" => Route::Subscribe,
        "publish" | "pubsub|channels" | "pubsub|numsub" | "pubsub|numpat" => Route::PubSub,
        "unsubscribe" | "punsubscribe" => Route::Local(Local::Unsubscribe),
        "ssubscribe" => Route::ShardPubSub(ShardPubSub::Subscribe),
        "sunsubscribe" => Route::ShardPubSub(ShardPubSub::Unsubscribe),
        "spublish" => Route::ShardPubSub(ShardPubSub::Publish),
        "pubsub|shardchannels" => Route::ShardPubSub(ShardPubSub::Channels),
        "pubsub|shardnumsub" => Route::ShardPubSub(ShardPubSub::Numsub),
        // Client-side caching: see Refusal::Tracking.
        "client|tracking" => Route::Refuse(R::Tracking),
        _ if spec.flags & F_PUBSUB != 0 => Route::Refuse(R::Unsupported),
        _ if spec.flags & F_BLOCKING != 0 && has_keys(spec) => Route::Blocking,
        _ if spec.flags & F_BLOCKING != 0 => Route::Refuse(R::Blocking),
        "eval" | "evalsha" | "eval_ro" | "evalsha_ro" | "fcall" | "fcall_ro" => Route::Keyed,
        _ if has_keys(spec) => Route::Keyed,
        _ => Route::Refuse(R::Unsupported),
    }
}

/// Commands the proxy answers that act on other clients or see their
/// traffic: with an `admin_password`, only for a connection that gave it
/// (`SHARDIS.ADMIN`), as CONFIG SET.
pub fn admin_only(name: &str) -> bool {
    matches!(
        name,
        "client|kill" | "client|pause" | "client|unpause" | "monitor" | "slowlog|reset"
    )
}

/// The refusal of an [`admin_only`] command to a connection that is not admin.
pub fn needs_admin(name: &str) -> ReplyError {
    ReplyError::new(
        crate::error::ErrorKind::NoPerm,
        format!(
            "shardis: {} needs SHARDIS.ADMIN <admin_password> first",
            name.replace('|', " ").to_ascii_uppercase()
        ),
    )
}

/// Why the commands a proxy cannot answer honestly are refused.
mod why {
    pub const MEMORY: &str = "it describes one server's allocator; run it on a shard (INFO memory sums the shards)";
    pub const DEBUG: &str = "DEBUG acts on one server's internals (and can stall or crash it); run it on a shard";
    pub const WAIT: &str = "WAIT counts the replicas of the one server the connection writes to; behind the proxy each write goes to its own shard, so no count would be true";
    pub const DB: &str = "shardis serves database 0 only (SELECT 0)";
    pub const MIGRATE: &str = "keys move between shards only by the proxy's own migration after a topology change";
    pub const REPLICATION: &str = "replication is set up on each shard, not through the proxy, which would make every shard a replica of one server";
    pub const PERSISTENCE: &str =
        "persistence is each shard's own; run it on the shards (INFO persistence merges them)";
    pub const ACL: &str = "users are configured in proxy.toml ([[users]]) and re-read by SHARDIS.RELOAD";
    pub const SHUTDOWN: &str = "it would stop every shard; stop the proxy with SIGTERM, and the shards on their own";
    pub const ROLE: &str = "ROLE describes one server's replication; the proxy is not a replica of anything (INFO replication says role:master), ask a shard for its own";
    pub const CLUSTER: &str = "shardis is not a Redis Cluster: clients see one server (INFO cluster says cluster_enabled:0) and the proxy routes every key itself";
    pub const CACHING: &str = "client-side caching (CLIENT TRACKING) is not supported";
    pub const UNBLOCK: &str = "a blocked client waits on a connection of its own to a shard; unblocking it through the proxy is not supported (CLIENT KILL ends it)";
    pub const MODULES: &str = "modules are loaded on each shard, by its own configuration";
    pub const SCRIPT_DEBUG: &str = "the Lua debugger needs a debugging session on one server; run it on a shard";
}

/// CLIENT SETINFO came with Redis 7.2, after the 7.0 table; modern clients
/// (redis-py 5+, redis-rs) send it on connect, so the proxy serves it.
pub static CLIENT_SETINFO: CommandSpec = CommandSpec {
    name: "client|setinfo",
    arity: 4,
    flags: F_NOSCRIPT | F_LOADING | F_STALE,
    first_key: 0,
    last_key: 0,
    step: 0,
    acl_categories: &["@slow", "@connection"],
    tips: &["request_policy:all_nodes", "response_policy:all_succeeded"],
    key_specs: &[],
    subcommands: &[],
};

/// The proxy's own commands (`SHARDIS.*`), looked up after Redis's.
/// Their ACL categories: SHARDIS.ADMIN is allowed to every user (as AUTH),
/// SHARDIS.RELOAD is an admin command, SHARDIS.LOCK writes, SHARDIS.FENCE reads.
static PROXY_COMMANDS: [CommandSpec; 4] = [
    proxy_spec("shardis.admin", 2, &["@connection"]),
    proxy_spec("shardis.reload", -1, &["@admin", "@dangerous"]),
    proxy_spec("shardis.lock", 4, &["@write"]),
    proxy_spec("shardis.fence", 3, &["@read"]),
];

const fn proxy_spec(name: &'static str, arity: i32, acl_categories: &'static [&'static str]) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        flags: F_NOSCRIPT | F_LOADING | F_STALE,
        first_key: 0,
        last_key: 0,
        step: 0,
        acl_categories,
        tips: &[],
        key_specs: &[],
        subcommands: &[],
    }
}

fn proxy_command(name: &[u8]) -> Option<&'static CommandSpec> {
    if !is_proxy_command(name) {
        return None;
    }
    PROXY_COMMANDS
        .iter()
        .find(|s| name.eq_ignore_ascii_case(s.name.as_bytes()))
}

/// `SHARDIS.*`: the proxy's own commands, not in the Redis command table.
pub fn is_proxy_command(name: &[u8]) -> bool {
    name.len() > 8 && name[..8].eq_ignore_ascii_case(b"shardis.")
}

/// Whether the proxy serves the command (for COMMAND's listing): for a
/// container command, whether it serves any subcommand.
pub fn served(spec: &CommandSpec) -> bool {
    if spec.subcommands.is_empty() {
        !matches!(route_of(spec, &[spec.name.as_bytes()]), Route::Refuse(_))
    } else {
        spec.name == "command" || spec.subcommands.iter().any(served)
    }
}

/// Whether the command takes key arguments at all.
pub fn has_keys(spec: &CommandSpec) -> bool {
    spec.first_key > 0
        || spec
            .key_specs
            .iter()
            .any(|k| !matches!((k.begin, k.find), (BeginSearch::Unknown, _) | (_, FindKeys::Unknown)))
}

fn has_arg(args: &[&[u8]], word: &[u8]) -> bool {
    args.iter().skip(1).any(|a| a.eq_ignore_ascii_case(word))
}

/// Redis's reply for an unknown command, quoting the first arguments.
fn unknown_command(args: &[&[u8]]) -> ReplyError {
    let mut s = format!(
        "unknown command '{}', with args beginning with: ",
        printable(args[0], 128)
    );
    for a in args.iter().skip(1).take(10) {
        s.push('\'');
        s.push_str(&printable(a, 128));
        s.push_str("' ");
    }
    ReplyError::err(s)
}

/// A short, single-line rendering of client bytes for error messages.
pub fn printable(b: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(max)]);
    s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(cmd: &str) -> Result<Route, String> {
        let args: Vec<&[u8]> = cmd.split(' ').map(|s| s.as_bytes()).collect();
        lookup(&args).map(|l| l.route).map_err(|e| e.to_string())
    }

    #[test]
    fn routes() {
        assert_eq!(route("GET a"), Ok(Route::Keyed));
        assert_eq!(route("get a"), Ok(Route::Keyed));
        assert_eq!(route("MGET a b"), Ok(Route::Fanout(Fanout::Mget)));
        assert_eq!(route("ping"), Ok(Route::Local(Local::Ping)));
        assert_eq!(route("client setinfo lib-name x"), Ok(Route::Local(Local::Client)));
        assert_eq!(route("object encoding k"), Ok(Route::Keyed));
        assert_eq!(route("blpop a 0"), Ok(Route::Blocking));
        assert_eq!(route("xread count 1 streams s 0"), Ok(Route::Keyed));
        assert_eq!(route("xread block 0 streams s 0"), Ok(Route::Blocking));
        assert_eq!(route("subscribe c"), Ok(Route::Subscribe));
        assert_eq!(route("publish c m"), Ok(Route::PubSub));
        assert_eq!(route("ssubscribe c"), Ok(Route::ShardPubSub(ShardPubSub::Subscribe)));
        assert_eq!(route("spublish c m"), Ok(Route::ShardPubSub(ShardPubSub::Publish)));
        assert_eq!(route("client tracking on"), Ok(Route::Refuse(Refusal::Tracking)));
        assert_eq!(route("multi"), Ok(Route::Transaction(TxCommand::Multi)));
        assert_eq!(route("watch k"), Ok(Route::Transaction(TxCommand::Watch)));
        assert_eq!(route("unwatch"), Ok(Route::Transaction(TxCommand::Unwatch)));
        assert_eq!(route("SHARDIS.reload force"), Ok(Route::Proxy(ProxyCommand::Reload)));
        assert_eq!(route("shardis.lock k t 10"), Ok(Route::Proxy(ProxyCommand::Lock)));
        assert_eq!(
            route("shardis.lock k t").unwrap_err(),
            "ERR wrong number of arguments for 'shardis.lock' command"
        );
        assert!(
            route("shardis.nope")
                .unwrap_err()
                .starts_with("ERR unknown command 'shardis.nope'")
        );
        assert_eq!(route("copy a b"), Ok(Route::Keyed));
        assert_eq!(route("copy a b db 1"), Ok(Route::Refuse(Refusal::Because(why::DB))));
        assert_eq!(route("bgsave"), Ok(Route::Refuse(Refusal::Because(why::PERSISTENCE))));
        assert_eq!(route("memory usage k"), Ok(Route::Keyed));
        assert_eq!(route("object freq k"), Ok(Route::Keyed));
        assert_eq!(route("memory purge"), Ok(Route::Broadcast(Broadcast::AllOk)));
        assert_eq!(route("client kill id 1"), Ok(Route::Local(Local::Client)));
        assert_eq!(route("slowlog get 1"), Ok(Route::Local(Local::Slowlog)));
        assert_eq!(route("monitor"), Ok(Route::Local(Local::Monitor)));
        assert_eq!(route("lastsave"), Ok(Route::Refuse(Refusal::Because(why::PERSISTENCE))));
        assert_eq!(route("command"), Ok(Route::Local(Local::Command)));
        assert_eq!(route("cluster info"), Ok(Route::Refuse(Refusal::Because(why::CLUSTER))));
        assert_eq!(route("readonly"), Ok(Route::Refuse(Refusal::Because(why::CLUSTER))));
        assert_eq!(route("xinfo help"), Ok(Route::Broadcast(Broadcast::First)));
        assert_eq!(route("config get save"), Ok(Route::Broadcast(Broadcast::ConfigGet)));
        assert_eq!(route("config set a b"), Ok(Route::Broadcast(Broadcast::AdminAgree)));
        assert_eq!(route("eval x 0"), Ok(Route::Keyed));
        assert_eq!(route("function load x"), Ok(Route::Broadcast(Broadcast::Agree)));
        assert_eq!(route("function list"), Ok(Route::Broadcast(Broadcast::FunctionList)));
        assert_eq!(route("function stats"), Ok(Route::Broadcast(Broadcast::FunctionStats)));
        assert_eq!(route("function kill"), Ok(Route::Broadcast(Broadcast::Kill)));
        assert_eq!(route("fcall f 1 k"), Ok(Route::Keyed));
        assert_eq!(route("fcall_ro f 0"), Ok(Route::Keyed));
    }

    #[test]
    fn errors_like_redis() {
        assert_eq!(
            route("get").unwrap_err(),
            "ERR wrong number of arguments for 'get' command"
        );
        assert_eq!(
            route("client").unwrap_err(),
            "ERR wrong number of arguments for 'client' command"
        );
        assert_eq!(
            route("client bogus").unwrap_err(),
            "ERR unknown subcommand 'bogus'. Try CLIENT HELP."
        );
        assert_eq!(
            route("foo a b").unwrap_err(),
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
        );
    }
}
