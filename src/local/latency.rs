//! LATENCY, answered by the proxy for itself. The proxy records no latency
//! events (Redis's `latency-monitor-threshold` events are a server's: fork,
//! AOF fsync, expire cycles ...), so LATEST, HISTORY and HISTOGRAM are
//! empty, RESET resets nothing, GRAPH has no samples and DOCTOR says where
//! the numbers are: each shard's own LATENCY, and the proxy's SLOWLOG.

use crate::protocol::Encoder;

const DOCTOR: &str = "shardis records no latency events of its own: the events Redis's latency monitor tracks (fork, fsync, expire cycles, slow commands) happen on the shards. Run LATENCY DOCTOR on each shard directly (CONFIG SET latency-monitor-threshold <milliseconds> through the proxy enables it on every shard), and SLOWLOG GET on the proxy for requests slow end to end.\n";

/// LATENCY's subcommands (`args[0]` is LATENCY; arity already checked).
pub fn command(args: &[&[u8]], enc: &mut Encoder<'_>) {
    let sub = args[1].to_ascii_lowercase();
    match sub.as_slice() {
        b"latest" | b"history" => enc.array(0),
        b"histogram" => enc.map(0),
        b"reset" => enc.integer(0),
        b"graph" => enc.error(&format!(
            "ERR No samples available for event '{}'",
            crate::command::printable(args[2], 128)
        )),
        b"doctor" => enc.verbatim(DOCTOR.as_bytes()),
        _ => {
            let lines = [
                "LATENCY <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
                "DOCTOR",
                "    Return a human readable latency analysis report.",
                "GRAPH <event>",
                "    Return an ASCII latency graph for the <event> class.",
                "HISTORY <event>",
                "    Return time-latency samples for the <event> class.",
                "LATEST",
                "    Return the latest latency samples for all events.",
                "RESET [<event> ...]",
                "    Reset latency data of one or more <event> classes.",
                "HISTOGRAM [COMMAND ...]",
                "    Return a cumulative distribution of latencies for the specified command names.",
                "HELP",
                "    Prints this help.",
                "shardis: the proxy records no latency events; run LATENCY on the shards.",
            ];
            enc.help(&lines);
        }
    }
}
