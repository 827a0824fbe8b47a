//! One client connection: read requests, route each, execute the plan, and
//! write replies in request order.
//!
//! The session reads whatever the client has pipelined, parses every complete
//! request, asks the [`Router`] what to do with it and executes the
//! [`Plan`] at once: to a shard's connection, to several shards (fan-out), to
//! the lock worker, or to the proxy itself. Every request gets a slot in
//! [`replies::Replies`]; backend replies come back on the session's inbox,
//! possibly out of order across shards, and the session writes the longest
//! complete prefix in one write. A client with `max_pipeline` requests
//! outstanding is not read from until replies drain, which bounds the memory
//! one client can pin.
//!
//! At shutdown ([`crate::shutdown`]) the session stops reading, answers every
//! complete request it has already read, and closes the connection after the
//! last of those replies: at a request boundary, so the client sees whole
//! replies and then the end of the stream, and a request it sent that was
//! not read was not executed either. See [`Drain`].
//!
//! - this file: the connection loop, and executing a plan.
//! - [`replies`]: reply slots in request order.
//! - [`parking`] and [`parked`]: requests waiting for their keys to move
//!   (migration); [`readthrough`]: reads of moving keys, where they are.
//! - [`transaction`]: MULTI / EXEC / DISCARD and queueing.
//! - [`spanning`]: transactions and blocking pops over several shards.
//! - [`pubsub`] and [`subconn`]: SUBSCRIBE / PSUBSCRIBE, a connection to the
//!   pub/sub shard.
//! - [`scan`]: SCAN going on into the next shard within one call.
//! - [`sharded`]: sharded pub/sub (SSUBSCRIBE), a connection per shard.
//! - [`drain`]: a session's part in a shutdown.
//! - [`admin`]: `SHARDIS.ADMIN`, `SHARDIS.RELOAD`.
//! - [`io`]: socket reads and writes that never wait, and the lingering
//!   close of a drained connection (the session is generic over its
//!   stream: plain TCP or TLS).
//! - [`outbuf`]: writing out, backpressure on a client that does not read,
//!   the output buffer limit.
//! - [`ops`]: the registry entry, monitors, CLIENT REPLY / PAUSE, slow log
//!   timing.
//! - [`send`]: requests sent to shards and to the lock worker.
//! - [`metered`]: the `/metrics` counts; [`xshard`]: cross-shard commands.

mod admin;
mod drain;
mod io;
mod metered;
mod ops;
mod outbuf;
mod parked;
mod parking;
mod pubsub;
mod rare;
mod readthrough;
mod replies;
mod scan;
mod send;
mod sharded;
mod spanning;
mod subconn;
mod transaction;
mod xshard;

use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;

use drain::{Drain, signalled};
use io::linger_close;
use outbuf::READ_PAUSE;
use tokio::sync::mpsc;
use tracing::debug;

use crate::backend::{Completion, Job, inbox};
use crate::client::ClientState;
use crate::command::Local;
use crate::error::ReplyError;
use crate::local;
use crate::lock::worker::LockRequest;
use crate::merge::Merge;
use crate::protocol::request::INLINE_ARGS;
use crate::protocol::{Encoder, Request, RequestParser};
use crate::registry::{flag, signal};
use crate::router::{Ctx, Plan, Router, View};
use crate::state::Shared;
use crate::tls::stream::Stream;
use crate::topology::Topology;
use crate::transaction::Transaction;
use rare::Rare;
use replies::{At, Replies, Slot};

pub struct Session {
    shared: Arc<Shared>,
    pub state: ClientState,
    parser: RequestParser,
    router: Router,
    replies: Replies,
    /// Where backend replies come back. Made when the first request goes to
    /// a backend, so a client that never sends one costs no channel (tokio
    /// allocates about 2 KiB per channel up front; bench/alloc_count.rs).
    inbox: Option<Inbox>,
    /// Which connection of each shard's pool this client uses.
    lane: usize,
    max_pipeline: usize,
    /// Parsing stopped at `max_pipeline` with requests left in the read
    /// buffer: they are parsed as soon as a slot is written out, since the
    /// client may send nothing more to wake the session.
    pipeline_full: bool,
    /// Close after writing what is pending (QUIT, protocol error).
    closing: bool,
    /// This session's lock worker, started by its first lock command.
    lock_tx: Option<mpsc::UnboundedSender<LockRequest>>,
    /// Requests parked in [`Slot::Migrating`]. While there are any, every
    /// keyed request parks behind them, so none overtakes an earlier one on
    /// the same key when the migration ends or a shard finishes meanwhile.
    parked: usize,
    /// The transaction this client opened with MULTI, if any.
    tx: Option<Box<Transaction>>,
    /// The keys this client WATCHes and the connection of its own that
    /// watches them, from WATCH until EXEC, DISCARD, UNWATCH or RESET.
    /// Boxed: rare, and the session's size is every idle client's cost.
    watching: Option<Box<transaction::Watching>>,
    /// EXECs sent with PUBLISH / SPUBLISH to send once they commit: the
    /// EXEC's slot and the publishes (see [`crate::transaction`]).
    /// Boxed: rare, and the session's size is every idle client's cost.
    #[allow(clippy::box_collection)]
    exec_publishes: Option<Box<Vec<transaction::ExecPublishes>>>,
    /// The slot of a blocking command (BLPOP ...) still waiting: until it
    /// answers, nothing more is read or dispatched, as Redis blocks a client.
    blocked: Option<u64>,
    /// `blocked` is a cross-shard command, not counted in INFO's blocked_clients.
    blocked_uncounted: bool,
    /// The client's channels and patterns (SUBSCRIBE / PSUBSCRIBE) and its
    /// connection to the pub/sub shard, from its first SUBSCRIBE until RESET.
    csub: Option<Box<pubsub::Subs>>,
    /// The client's shard channels (SSUBSCRIBE) and its connections to
    /// their shards, from its first SSUBSCRIBE until RESET.
    ssub: Option<Box<sharded::ShardSubs>>,
    /// Where this session is in a shutdown.
    drain: Drain,
    /// The client has sent something (at least one byte) since it connected.
    heard: bool,
    /// Lines for this client while it is a MONITOR.
    monitor: Option<mpsc::Receiver<Bytes>>,
    /// A request read during a CLIENT PAUSE that holds it: nothing more is
    /// parsed until the pause ends.
    held: Option<Box<Request>>,
    /// When the last read happened (the start of its requests' slow log time).
    read_at: Instant,
    /// The slow log threshold for the requests of this read (`None`: off).
    slow: Option<Duration>,
    /// Requests waiting for their reply, for the slow log.
    timings: ops::Timings,
    /// When the registry entry's last-heard time was last written (see
    /// `ops::TOUCH_EVERY`).
    touched: Instant,
    /// The command last written to the registry entry.
    last_cmd: Option<&'static crate::command::spec::CommandSpec>,
    /// [`crate::registry::raised`] when this session last left its waker
    /// in its signal (`u64::MAX`: never yet).
    sig_seen: u64,
    metered: metered::Metered,
    /// Since when the replies waiting for this client have been over its
    /// soft output buffer limit (see [`outbuf`]).
    over_soft: Option<Instant>,
    /// The registry entry shows output bytes held (CLIENT LIST's `omem=`):
    /// see `outbuf`.
    out_shown: bool,
}

impl Session {
    pub fn new(shared: Arc<Shared>, id: u64, addr: String, laddr: String) -> Session {
        let topo = shared.topology.load_full();
        let cfg = topo.config.clone();
        let entry = shared.clients.register(id, addr.clone(), laddr.clone());
        let user = topo.acl.default_user().clone();
        Session {
            state: ClientState::new(id, addr, laddr, user, topo.acl.needs_login(), entry),
            parser: RequestParser::new(cfg.parser_limits()),
            router: Router::default(),
            replies: Replies::default(),
            inbox: None,
            lane: id as usize,
            max_pipeline: cfg.limits.max_pipeline,
            pipeline_full: false,
            closing: false,
            lock_tx: None,
            parked: 0,
            tx: None,
            watching: None,
            exec_publishes: None,
            blocked: None,
            blocked_uncounted: false,
            csub: None,
            ssub: None,
            drain: Drain::Serving,
            heard: false,
            monitor: None,
            held: None,
            read_at: Instant::now(),
            slow: None,
            timings: ops::Timings::default(),
            touched: Instant::now(),
            last_cmd: None,
            sig_seen: u64::MAX,
            metered: metered::Metered::new(shared.topology.executors().group_here()),
            over_soft: None,
            out_shown: false,
            shared,
        }
    }

    /// Serves the connection until the client leaves or breaks the
    /// protocol, or until the proxy shuts down (see [`Drain`]). Compiled
    /// once per kind of stream (plain TCP, TLS): no dispatch per read.
    ///
    /// Not an `async fn`: its arguments would be stored twice in the future
    /// (once as arguments, once as the body's locals: 944 more bytes in
    /// every connection's task); an `async move` block keeps one copy.
    #[allow(clippy::manual_async_fn)]
    pub fn run<S: Stream>(mut self, mut sock: S) -> impl Future<Output = ()> + Send {
        async move {
            // Lent by the thread while it holds unparsed bytes (see `io::read_some`).
            let mut rbuf = BytesMut::new();
            self.state.entry.set_fd(sock.tcp().as_raw_fd());
            // The shutdown raises DRAIN in every registered session; one that
            // registered after it did sees the flag here.
            if self.shared.shutdown.sessions_draining() {
                self.start_drain();
            }
            loop {
                // CLIENT KILL: the connection closes at once, as on Redis. A
                // busy session sees the bit here; one that waits is woken by
                // its signal, polled last so that a pass with work to do does
                // not pay for it. Both only once a signal was raised since
                // this session last looked (see `registry::raised`): its
                // waker is in the signal meanwhile, so a raise wakes it.
                let epoch = crate::registry::raised();
                let look = epoch != self.sig_seen;
                if look && self.state.entry.killed() {
                    return;
                }
                let mut registered = false;
                // While blocked the socket is still read (up to a bound), not
                // parsed: a client that leaves must be noticed, so its blocking
                // command's backend connection is closed, as Redis would.
                // Nor while its replies pile up unread (see `outbuf`).
                let unwritten = self.replies.out.len();
                let can_read = !self.closing
                    && self.drain != Drain::Draining
                    && self.replies.len() < self.max_pipeline
                    && unwritten < READ_PAUSE
                    && ((self.blocked.is_none() && self.held.is_none()) || rbuf.len() < BLOCKED_READ_MAX);
                let due = self.soft_due();
                // Output the socket did not take yet: wait for it to take more
                // (TLS: records the layer holds count too).
                let want_write = unwritten > 0 || (S::BUFFERED && sock.holds_output());
                tokio::select! {
                    biased;
                    c = recv(&mut self.inbox) => {
                        // The session holds a sender, so the channel never closes.
                        let Some(c) = c else { return };
                        self.complete(c);
                        while let Some(c) = self.inbox.as_mut().and_then(|(_, rx)| rx.try_recv()) {
                            self.complete(c);
                            // Past the limit already: closed before taking more.
                            if self.replies.held() >= READ_PAUSE && !self.within_output_limit() {
                                return;
                            }
                        }
                        // A blocking command answered: go on with what the
                        // client pipelined behind it.
                        if self.blocked.is_none() && !rbuf.is_empty() {
                            self.parse_and_dispatch(&mut rbuf);
                        }
                    }
                    r = io::ready(&mut sock, &mut rbuf, can_read, want_write), if can_read || want_write => {
                        // Writable: written below.
                        if let io::Io::Read(r) = r {
                            match r {
                                Ok(0) | Err(_) => return,
                                Ok(n) => self.shared.counters.bytes(self.metered.group, n as u64, 0),
                            }
                            self.heard = true;
                            self.parse_and_dispatch(&mut rbuf);
                            // The first request is in (not cut in two): drain.
                            if matches!(self.drain, Drain::FirstRequest(_)) && rbuf.is_empty() {
                                self.drain = Drain::Draining;
                            }
                        }
                    }
                    // Rare states (see `rare`): guarded, and boxed when they hold.
                    ev = rare::next(
                        &mut self.ssub,
                        &mut self.csub,
                        // Room for messages: not while the client's output is
                        // full (it does not read: the shard's own pubsub
                        // limit then applies, see `pubsub`).
                        self.replies.len() < self.max_pipeline && unwritten < READ_PAUSE,
                        &mut self.monitor,
                        &self.shared,
                        self.held.is_some(),
                        self.drain,
                        rare::Output { unwritten, due },
                    ),
                        if rare::active(&self.ssub, &self.csub, &self.monitor, self.held.is_some(), self.drain, due) =>
                    {
                        match ev {
                            Rare::Shard(ev) => self.shard_event(ev),
                            Rare::Classic(ev) => if !self.classic_event(ev) { return },
                            Rare::Monitor(line) => if !self.monitor_write(line) { return },
                            Rare::PauseOver => self.release_held(&mut rbuf),
                            Rare::Grace => self.drain = Drain::Draining,
                            // Closed past the soft limit, below.
                            Rare::SoftDue => {}
                        }
                    }
                    sig = signalled(&self.state.entry.signal, self.drain, look.then_some(&mut registered), epoch) => {
                        if sig & signal::KILL != 0 {
                            return;
                        }
                        // 0: a signal was raised somewhere; the next pass looks.
                        if sig & signal::DRAIN != 0 {
                            self.start_drain();
                        }
                    }
                }
                self.replies.flush(self.state.proto);
                if self.pipeline_full && self.replies.len() < self.max_pipeline {
                    self.parse_and_dispatch(&mut rbuf);
                    self.replies.flush(self.state.proto);
                }
                io::give_back(&mut rbuf);
                if !self.timings.is_empty() {
                    self.check_slow();
                }
                if !self.write_out(&mut sock) {
                    return;
                }
                let written = self.replies.out.is_empty();
                if self.closing && self.replies.is_empty() && written {
                    let _ = sock.shutdown().await;
                    return;
                }
                // The waker is in the signal: until the next raise, the
                // entry need not be looked at.
                if registered {
                    self.sig_seen = epoch;
                }
                // The signal wakes a session that waits; this catches one that
                // is always busy, whose select never gets to the signal.
                if self.drain == Drain::Serving
                    && crate::registry::raised() != self.sig_seen
                    && self.state.entry.signal.bits() & signal::DRAIN != 0
                {
                    self.start_drain();
                }
                // Every request read is answered (a complete one left unparsed
                // would have a slot: parsing stops only at a full pipeline or
                // a blocked client).
                if self.drain == Drain::Draining
                    && self.replies.is_empty()
                    && written
                    && self.blocked.is_none()
                    && self.held.is_none()
                {
                    Box::pin(linger_close(sock, rbuf)).await;
                    return;
                }
            }
        }
    }

    fn parse_and_dispatch(&mut self, rbuf: &mut BytesMut) {
        // A guard, not `load_full`: cloning the Arc would bump one reference
        // count shared by every session on every thread, once per read.
        let topo = self.shared.topology.load();
        let pause = self.ops_read();
        let mut n = 0u64;
        while !self.closing && self.blocked.is_none() && self.held.is_none() && self.replies.len() < self.max_pipeline {
            match self.parser.parse(rbuf) {
                Ok(Some(req)) => {
                    n += 1;
                    match pause {
                        Some((mode, _)) if Session::pause_holds(mode, &req) => self.hold_paused(req),
                        _ => self.dispatch(&topo, req, At::Next, false),
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    debug!(client = self.state.id, error = %e, "protocol error, closing");
                    self.replies
                        .error(At::Next, self.state.proto, &ReplyError::err(e.to_string()));
                    self.closing = true;
                }
            }
        }
        self.pipeline_full = !rbuf.is_empty() && self.replies.len() >= self.max_pipeline;
        self.meter_read(n);
    }

    /// Routes `req` and executes the plan into slot `at`. `released`: the
    /// request waited for its keys to move, and they have.
    fn dispatch(&mut self, topo: &Topology, req: Request, at: At, released: bool) {
        let (mut inline, mut heap) = ([&[][..]; INLINE_ARGS], Vec::new());
        let args = req.arg_slices(&mut inline, &mut heap);
        if let Some(reply) = self.subscribed_mode(args) {
            return self.replies.ready(at, reply);
        }
        let ctx = Ctx {
            authenticated: self.state.authenticated,
            admin: self.state.admin_gate_open(),
            perms: self.state.perms(),
            in_tx: self.tx.is_some(),
            parked: self.parked > 0,
            released,
            rerouted: at != At::Next,
        };
        let plan = self.router.route(&View::of(topo), ctx, &req, args);
        if at != At::Next {
            return self.execute(topo, plan, &req, args, at);
        }
        self.ops_before(args);
        self.meter_call();
        let (seq, served) = (self.replies.next_seq(), ops::Served::of(&plan, &self.router.parts));
        let tx = matches!(plan, Plan::Tx(_));
        self.execute(topo, plan, &req, args, at);
        if tx {
            self.state.entry.set_multi(self.tx.as_ref().map(|t| t.queued_count()));
        }
        self.ops_after(&req, args, seq, served);
    }

    fn execute(&mut self, topo: &Topology, plan: Plan, req: &Request, args: &[&[u8]], at: At) {
        let proto = self.state.proto;
        match plan {
            // While watching, this client's commands on the watched shard go
            // over the watch connection, in order with WATCH and EXEC (as on
            // one Redis, the client's own write to a watched key counts).
            Plan::Forward(shard) if self.watching.as_ref().is_some_and(|w| w.shard == shard) => {
                self.send_watched(req.raw.clone(), 1, at);
            }
            Plan::Forward(shard) => {
                let seq = self.replies.put(at, Slot::One(None));
                // A read may go to a replica (read_from), but not while keys
                // move (a replica may lack a key just moved to its master).
                let job = Job::new(req.raw.clone(), self.reply_to(seq, 0));
                let steady = || at == At::Next && topo.active_migration().is_none() && topo.hold.is_none();
                topo.shards[shard].send_keyed(proto, self.lane, job, args, steady);
            }
            Plan::Block(shard) => {
                // Like Redis, this client is served nothing more until the
                // blocking command answers.
                let seq = self.replies.put(at, Slot::One(None));
                self.blocked = Some(seq);
                self.state.entry.set_flag(flag::BLOCKED, true);
                self.shared.stats.blocked.fetch_add(1, Ordering::Relaxed);
                let reply = self.reply_to(seq, 0);
                topo.shards[shard].send_blocking(proto, req.raw.clone(), reply);
            }
            Plan::SpanPop(cmd) => self.span_pop(topo, cmd, args, at),
            Plan::CrossShard(p) => self.cross_shard(p, at),
            Plan::Subscribe => self.classic_sub(topo, args, req.raw.clone(), at),
            Plan::Local(Local::Unsubscribe) if self.has_subscriber() => {
                self.classic_sub(topo, args, req.raw.clone(), at)
            }
            Plan::ShardSub { subscribe } => self.shard_sub(topo, subscribe, args, at),
            Plan::Split { merge } => {
                // Taken and given back: the router's buffer keeps its capacity.
                let mut parts = std::mem::take(&mut self.router.parts);
                self.meter_fanout(false);
                let seq = self.replies.put(at, Slot::many(merge, parts.len()));
                for (part, (shard, sub)) in parts.drain(..).enumerate() {
                    // Each part is the same command on fewer keys.
                    let job = Job::new(sub, self.reply_to(seq, part as u32));
                    let steady = || at == At::Next && topo.active_migration().is_none() && topo.hold.is_none();
                    topo.shards[shard].send_keyed(proto, self.lane, job, args, steady);
                }
                self.router.parts = parts;
            }
            Plan::Broadcast { merge, script } => {
                self.meter_fanout(true);
                let Some(merge) = self.config_hook(args, merge, at) else {
                    return;
                };
                if let Some(body) = script {
                    self.shared.locks.remember_script(&body);
                }
                self.send_to_all(topo, merge, req.raw.clone(), at);
            }
            Plan::Lock(lock) => {
                if let Some(body) = &lock.script {
                    self.shared.locks.remember_script(body);
                }
                self.lock_request(req.clone(), lock.op, at);
            }
            Plan::Local(cmd) => {
                if cmd == Local::Hello
                    && let Some(e) = self.hello_while_subscribed(args)
                {
                    return self.replies.error(at, proto, &e);
                }
                if cmd == Local::Reset {
                    self.watching = None;
                    self.ssub = None;
                    self.drop_subscriber();
                    self.show_subs();
                    self.stop_monitor();
                }
                let mut b = BytesMut::new();
                let mut enc = Encoder::new(&mut b, proto);
                let outcome = local::run(cmd, args, &mut self.state, &self.shared, topo, &mut enc);
                if matches!(cmd, Local::Hello | Local::Client | Local::Reset | Local::Auth) {
                    self.state.publish();
                }
                match outcome {
                    local::Outcome::Reply => self.replies.ready(at, b.freeze()),
                    local::Outcome::Monitor => {
                        self.replies.ready(at, b.freeze());
                        self.start_monitor();
                    }
                    local::Outcome::Close => {
                        self.replies.ready(at, b.freeze());
                        self.closing = true;
                    }
                    local::Outcome::Info(info, sections) => {
                        let mut info_args = vec!["INFO"];
                        info_args.extend(sections);
                        let req = Request::from_args(&info_args).raw;
                        self.send_to_all(topo, Merge::Info(info), req, at);
                    }
                }
            }
            Plan::Tx(step) if at == At::Next => self.transaction(topo, step, req),
            Plan::Admin(cmd) => self.admin(cmd, at),
            Plan::Park(moves) => {
                let m = topo.migration.clone();
                self.park(topo, m.as_deref(), moves, parked::Then::Dispatch(req.clone()), at);
            }
            Plan::ReadThrough { from, key } => self.read_through(topo, from, key, req, at),
            Plan::Hold => self.hold(topo, parked::Then::Dispatch(req.clone()), at),
            Plan::Error(e) => {
                self.meter_error(&e);
                self.replies.error(at, proto, &e);
            }
            // Only keyed requests wait for a migration or a hold: none of
            // these can be the plan of a request routed again.
            Plan::Tx(_) => self.replies.error(
                at,
                proto,
                &ReplyError::err("shardis: request not dispatched after migration"),
            ),
        }
    }

    /// A backend (or the lock worker) answered.
    fn complete(&mut self, c: Completion) {
        if self.blocked == Some(c.seq) {
            self.blocked = None;
            if !std::mem::take(&mut self.blocked_uncounted) {
                self.state.entry.set_flag(flag::BLOCKED, false);
                self.shared.stats.blocked.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if self.scan_step(&c) || self.publish_step(&c) {
            return;
        }
        if let Some(c) = self.replies.complete(c) {
            self.migration_step(c);
        }
    }
}

/// The completion channel of a session: its sender is cloned into every job.
type Inbox = (inbox::Sink, inbox::Inbox);

/// The next backend reply; never resolves while the session has no inbox.
async fn recv(inbox: &mut Option<Inbox>) -> Option<Completion> {
    match inbox {
        Some((_, rx)) => Some(rx.recv().await),
        None => std::future::pending().await,
    }
}

/// Most bytes read from a blocked client (and kept until its blocking
/// command answers); past it the socket is left alone.
const BLOCKED_READ_MAX: usize = 64 * 1024;
