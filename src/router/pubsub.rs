//! Pub/sub routing beyond the pub/sub shard: sharded pub/sub by each
//! channel's place on the ring (hash tags honoured, as for keys), and
//! PUBLISH / SPUBLISH inside MULTI (sent after EXEC commits).

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;

use super::{Plan, TxStep, View};
use crate::command::spec::CommandSpec;
use crate::command::{Route, ShardPubSub};
use crate::merge::{Merge, MgetParts};
use crate::protocol::Request;
use crate::protocol::request::{put_bulk, put_header};

/// SSUBSCRIBE, SUNSUBSCRIBE, SPUBLISH, PUBSUB SHARDCHANNELS / SHARDNUMSUB.
pub(super) fn sharded(
    view: &View<'_>,
    kind: ShardPubSub,
    req: &Request,
    args: &[&[u8]],
    parts: &mut Vec<(usize, Bytes)>,
) -> Plan {
    match kind {
        ShardPubSub::Publish => Plan::Forward(view.shard_of(args[1])),
        ShardPubSub::Subscribe | ShardPubSub::Unsubscribe => {
            // One command per channel: each gets exactly one confirmation,
            // which answers that channel's part.
            parts.clear();
            for ch in &args[1..] {
                parts.push((view.shard_of(ch), Request::from_args(&[args[0], ch]).raw));
            }
            Plan::ShardSub {
                subscribe: kind == ShardPubSub::Subscribe,
            }
        }
        ShardPubSub::Channels => Plan::Broadcast {
            merge: Merge::Union,
            script: None,
        },
        ShardPubSub::Numsub => numsub(view, req, args, parts),
    }
}

/// PUBSUB SHARDNUMSUB ch...: each channel asked of its shard, the answers
/// in the order of the request.
fn numsub(view: &View<'_>, req: &Request, args: &[&[u8]], parts: &mut Vec<(usize, Bytes)>) -> Plan {
    let channels = &args[2..];
    let mut shards: SmallVec<[usize; 8]> = SmallVec::new();
    let mut channel_parts = MgetParts::with_capacity(channels.len());
    for ch in channels {
        let s = view.shard_of(ch);
        let part = shards.iter().position(|&x| x == s).unwrap_or_else(|| {
            shards.push(s);
            shards.len() - 1
        });
        channel_parts.push(part as u16);
    }
    if shards.len() <= 1 {
        return Plan::Forward(shards.first().copied().unwrap_or(0));
    }
    let mut buf = BytesMut::with_capacity(req.raw.len() + shards.len() * 40);
    parts.clear();
    for (part, &shard) in shards.iter().enumerate() {
        let mine = channels
            .iter()
            .zip(&channel_parts)
            .filter(|&(_, &p)| p as usize == part)
            .map(|(c, _)| c);
        put_header(
            &mut buf,
            b'*',
            2 + channel_parts.iter().filter(|&&p| p as usize == part).count(),
        );
        put_bulk(&mut buf, args[0]);
        put_bulk(&mut buf, args[1]);
        for c in mine {
            put_bulk(&mut buf, c);
        }
        parts.push((shard, buf.split().freeze()));
    }
    Plan::Split {
        merge: Merge::Pairs(channel_parts),
    }
}

/// Inside MULTI: PUBLISH and SPUBLISH are kept aside and sent once EXEC has
/// committed (subscribers listen on other connections than the
/// transaction's shard, so they cannot be part of its batch). `None`: the
/// command is not one of them.
pub(super) fn in_multi(spec: &CommandSpec, route: Route) -> Option<Plan> {
    match (route, spec.name) {
        (Route::PubSub, "publish") => Some(Plan::Tx(TxStep::Publish { sharded: false })),
        (Route::ShardPubSub(ShardPubSub::Publish), _) => Some(Plan::Tx(TxStep::Publish { sharded: true })),
        _ => None,
    }
}
