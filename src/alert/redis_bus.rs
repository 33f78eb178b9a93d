//! The alert bus over Redis Streams, for several screening nodes behind one load balancer.
//!
//! # Data
//! - `kg:alerts:{<tenant>}`: one stream per tenant (the braces are a Cluster hash tag). Each
//!   entry has `ev` (the event, [`wire`] encoded) and `origin` (`<node>:<n>`: the publishing
//!   node's random id and its own running number for the event). `XADD ... MAXLEN ~ <cap>`
//!   keeps it near the configured length.
//! - `kg:tenants`: the set of tenants with a stream, so readers find new ones.
//!
//! # Flow
//! [`RedisBus::publish`] never waits: it puts the event in a bounded in-memory *outbox* and
//! wakes the node's writer task, which appends the outbox in order, in pipelined batches. One
//! reader task per node reads every tenant's stream (`XREAD BLOCK`) and appends each entry,
//! by its stream id, into a [`MemoryBus`] mirror of the streams' tails, which feeds the
//! ledger and this node's subscribers with their filters. So a node's own events reach its
//! own supervisors the same way as everyone else's, and every cursor is a stream id: a
//! supervisor can resume on any node. At start the reader loads the last `history` entries
//! of every tenant, so a node that has just joined replays like the others.
//!
//! # Exactly once
//! The writer removes events from the outbox only once Redis has confirmed the append. A
//! batch whose reply was lost (a timeout, a restart mid-call) is appended again, so an entry
//! may be stored twice; the reader drops every entry whose `<n>` is not above the last one
//! it saw from that `<node>` in that tenant, which the single in-order writer per node makes
//! exact. Duplicates never reach the mirror, the ledger or a subscriber.
//!
//! # Redis down
//! Screening never waits for Redis: the outbox takes events while the writer retries with a
//! backoff. It holds at most `buffer` events; past that the oldest are dropped and counted
//! (`kasuhara_redis_dropped_events_total`; `kasuhara_redis_buffered_events` shows the fill).
//! While appends fail, the node delivers its own events to its own subscribers at once,
//! *unsequenced*: the delivery carries the subscriber's current cursor, which it does not
//! advance. When Redis returns, the outbox is appended; each subscription passes over the
//! stream copy of an event it already received (see [`bus`](crate::alert::bus)), and other
//! nodes' subscribers receive them for the first time. So:
//! - a subscriber that stays on its node sees every event once;
//! - subscribers on other nodes see the outage's events once Redis is back, in stream order;
//! - a subscriber that leaves its node during the outage and resumes elsewhere with its
//!   cursor gets the outage events again from the stream (its cursor never moved past
//!   them): at least once across a node switch in an outage, which a client de-duplicates
//!   by `alert_id`. It is the price of delivering locally before an order exists.
//!
//! Redis must keep its data across a restart (append-only file): stream ids continue after
//! the last stored id, which the mirror relies on. A Redis restarted empty would number new
//! entries below the mirrors' heads, and they would be ignored until the nodes restart.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::Value;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::alert::ack::AckLedger;
use crate::alert::bus::{
    AlertBus, Cursor, HistorySizes, MemoryBus, Resume, SubscribeError, Subscription,
};
use crate::alert::{AlertFilter, HubEvent, wire};
use crate::redis::{KEY_PREFIX, Link, RedisCallError, RedisTarget};
use crate::telemetry;

/// Events appended per round trip: large enough to keep up with thousands of events per
/// second, small enough that one pipeline stays well under the call timeout.
const APPEND_BATCH: usize = 256;
/// How long the reader's `XREAD` blocks before it looks for new tenants.
const READ_BLOCK: Duration = Duration::from_millis(200);
/// Entries read per stream per `XREAD`.
const READ_COUNT: usize = 1024;
/// The longest wait between attempts while Redis is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How the Redis bus is sized.
#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// Subscribers may fall this many events behind before they skip.
    pub queue: usize,
    /// Events kept per tenant in each node's mirror (the replay window).
    pub history: HistorySizes,
    /// The approximate length cap of each tenant's stream (`MAXLEN ~`).
    pub stream_maxlen: usize,
    /// Events the outbox holds while Redis is slow or down.
    pub buffer: usize,
}

/// One event waiting to be appended.
#[derive(Debug)]
struct Outgoing {
    /// This node's number for it.
    local: u64,
    tenant_id: String,
    bytes: Vec<u8>,
    /// The event itself, until it has been delivered locally (outage) or appended.
    event: Option<HubEvent>,
}

/// The bounded queue between publishing and the writer task.
#[derive(Debug)]
struct Outbox {
    queue: Mutex<VecDeque<Outgoing>>,
    capacity: usize,
    wake: Notify,
    /// Whether the last append succeeded; while it is false, events are delivered locally at
    /// once.
    appending: AtomicBool,
}

impl Outbox {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Outgoing>> {
        // Every mutation is a push or a pop, so a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The alert bus over Redis Streams; see the module docs.
#[derive(Debug)]
pub struct RedisBus {
    node: u64,
    next_local: AtomicU64,
    mirror: Arc<MemoryBus>,
    ledger: Arc<AckLedger>,
    outbox: Arc<Outbox>,
}

impl RedisBus {
    /// Starts the bus: loads the tail of every tenant's stream into the mirror (when Redis
    /// answers; otherwise it starts empty and the reader catches up when Redis returns), then
    /// runs the writer and the reader on `tasks` until `shutdown`. The writer keeps trying to
    /// flush the outbox for one call timeout after shutdown.
    pub async fn start(
        target: &RedisTarget,
        config: RedisBusConfig,
        ledger: Arc<AckLedger>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let node = rand_node_id();
        let mirror = Arc::new(MemoryBus::mirror(config.queue, config.history.clone()));
        let outbox = Arc::new(Outbox {
            queue: Mutex::new(VecDeque::new()),
            capacity: config.buffer.max(1),
            wake: Notify::new(),
            appending: AtomicBool::new(true),
        });
        let mut reader = Reader {
            node,
            link: target.link(),
            mirror: Arc::clone(&mirror),
            ledger: Arc::clone(&ledger),
            history: config.history.clone(),
            last_origin: HashMap::new(),
            tenants: HashSet::new(),
        };
        if let Err(error) = reader.load_tails().await {
            telemetry::redis_error("read", &error);
            tracing::warn!("redis unreachable at start: the alert history starts empty");
        }
        let writer = Writer {
            node,
            link: target.link(),
            mirror: Arc::clone(&mirror),
            outbox: Arc::clone(&outbox),
            maxlen: config.stream_maxlen,
            known_tenants: HashSet::new(),
        };
        tasks.spawn(writer.run(shutdown.clone()));
        tasks.spawn(reader.run(shutdown));
        Self { node, next_local: AtomicU64::new(1), mirror, ledger, outbox }
    }

    /// This node's id in the streams' `origin` fields.
    pub fn node(&self) -> u64 {
        self.node
    }
}

impl AlertBus for RedisBus {
    fn publish(&self, event: HubEvent) -> Option<Cursor> {
        // Relaxed: only uniqueness and per-thread order matter, and the outbox lock orders
        // the pushes themselves.
        let local = self.next_local.fetch_add(1, Ordering::Relaxed);
        let bytes = wire::encode(&event);
        let tenant_id = event.tenant_id().to_owned();
        let event = if self.outbox.appending.load(Ordering::Acquire) {
            Some(event)
        } else {
            self.ledger.observe(&event);
            self.mirror.deliver_unsequenced(local, event);
            None
        };
        let dropped = {
            let mut queue = self.outbox.lock();
            queue.push_back(Outgoing { local, tenant_id, bytes, event });
            let dropped = queue.len().saturating_sub(self.outbox.capacity);
            queue.drain(..dropped);
            telemetry::redis_buffered(queue.len());
            dropped
        };
        if dropped > 0 {
            telemetry::redis_dropped(dropped as u64);
        }
        self.outbox.wake.notify_one();
        None
    }

    fn subscribe(
        &self,
        filter: AlertFilter,
        resume: Resume,
    ) -> Result<Subscription, SubscribeError> {
        self.mirror.subscribe(filter, resume)
    }
}

/// A node id for `origin` fields: random enough that two nodes (or one node's restarts)
/// never share one.
fn rand_node_id() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    // RandomState is seeded from the OS per process; mixing in the time and pid covers two
    // processes started with the same seed.
    RandomState::new().hash_one((nanos, std::process::id())) >> 1
}

fn stream_key(tenant_id: &str) -> String {
    format!("{KEY_PREFIX}:alerts:{{{tenant_id}}}")
}

fn tenants_key() -> String {
    format!("{KEY_PREFIX}:tenants")
}

/// Appends the outbox to the streams.
struct Writer {
    node: u64,
    link: Link,
    mirror: Arc<MemoryBus>,
    outbox: Arc<Outbox>,
    maxlen: usize,
    /// Tenants already added to `kg:tenants` by this node.
    known_tenants: HashSet<String>,
}

impl Writer {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        let mut draining_until = None;
        loop {
            let empty = self.outbox.lock().is_empty();
            if empty {
                if draining_until.is_some() {
                    return;
                }
                tokio::select! {
                    () = self.outbox.wake.notified() => {}
                    () = shutdown.cancelled() => {
                        draining_until = Some(tokio::time::Instant::now() + self.link.timeout());
                    }
                }
                continue;
            }
            if draining_until.is_some_and(|until| tokio::time::Instant::now() >= until) {
                tracing::warn!(
                    events = self.outbox.lock().len(),
                    "stopping with alert events not appended to redis"
                );
                return;
            }
            match self.append_batch().await {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(error) => {
                    telemetry::redis_error("append", &error);
                    self.deliver_locally();
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled(), if draining_until.is_none() => {
                            draining_until =
                                Some(tokio::time::Instant::now() + self.link.timeout());
                        }
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Appends the oldest events of the outbox in one pipeline; removes them once Redis
    /// confirmed. The lock is not held across the call.
    async fn append_batch(&mut self) -> Result<(), RedisCallError> {
        let mut pipe = redis::pipe();
        let mut last = 0;
        let mut new_tenants = Vec::new();
        {
            let queue = self.outbox.lock();
            for item in queue.iter().take(APPEND_BATCH) {
                pipe.cmd("XADD")
                    .arg(stream_key(&item.tenant_id))
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(self.maxlen)
                    .arg("*")
                    .arg("origin")
                    .arg(format!("{}:{}", self.node, item.local))
                    .arg("ev")
                    .arg(item.bytes.as_slice())
                    .ignore();
                if !self.known_tenants.contains(&item.tenant_id) {
                    new_tenants.push(item.tenant_id.clone());
                }
                last = item.local;
            }
        }
        new_tenants.sort();
        new_tenants.dedup();
        for tenant in &new_tenants {
            pipe.cmd("SADD").arg(tenants_key()).arg(tenant).ignore();
        }
        let () = self.link.call(&pipe, Duration::ZERO).await?;
        self.known_tenants.extend(new_tenants);
        let mut queue = self.outbox.lock();
        // Events may have been dropped from the front meanwhile (a full outbox); what was
        // appended is everything numbered up to `last`.
        while queue.front().is_some_and(|item| item.local <= last) {
            queue.pop_front();
        }
        telemetry::redis_buffered(queue.len());
        self.outbox.appending.store(true, Ordering::Release);
        Ok(())
    }

    /// Appending failed: deliver every event not yet delivered to this node's subscribers,
    /// and deliver new ones at publish until appends succeed again.
    fn deliver_locally(&self) {
        let mut queue = self.outbox.lock();
        // Set under the lock, so an event published concurrently is delivered either here or
        // by `publish`, never by neither.
        self.outbox.appending.store(false, Ordering::Release);
        for item in queue.iter_mut() {
            if let Some(event) = item.event.take() {
                self.mirror.deliver_unsequenced(item.local, event);
            }
        }
    }
}

/// Reads every tenant's stream into the mirror.
struct Reader {
    node: u64,
    link: Link,
    mirror: Arc<MemoryBus>,
    ledger: Arc<AckLedger>,
    history: HistorySizes,
    /// The last origin number seen per (tenant, node): entries at or below it are
    /// duplicates of a retried append.
    last_origin: HashMap<(String, u64), u64>,
    tenants: HashSet<String>,
}

impl Reader {
    async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let step = tokio::select! {
                step = self.step() => step,
                () = shutdown.cancelled() => return,
            };
            match step {
                Ok(()) => backoff = Duration::from_millis(50),
                Err(error) => {
                    telemetry::redis_error("read", &error);
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Learns new tenants (loading their tails), then reads what follows each head.
    async fn step(&mut self) -> Result<(), RedisCallError> {
        self.load_tails().await?;
        if self.tenants.is_empty() {
            tokio::time::sleep(READ_BLOCK).await;
            return Ok(());
        }
        let heads: HashMap<String, Cursor> = self.mirror.heads().into_iter().collect();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT").arg(READ_COUNT).arg("BLOCK").arg(READ_BLOCK.as_millis() as u64);
        cmd.arg("STREAMS");
        let tenants: Vec<&String> = self.tenants.iter().collect();
        for tenant in &tenants {
            cmd.arg(stream_key(tenant));
        }
        for tenant in &tenants {
            cmd.arg(heads.get(*tenant).map_or_else(|| "0-0".to_owned(), Cursor::to_string));
        }
        let reply: Value = self.link.call(&cmd, READ_BLOCK).await?;
        // Reply: [[key, [[id, [field, value, ...]], ...]], ...], or nil on timeout.
        for stream in array(reply) {
            let mut parts = array(stream).into_iter();
            let (Some(key), Some(entries)) = (parts.next(), parts.next()) else { continue };
            let Some(tenant) = text(key).and_then(|k| tenant_of_key(&k)) else { continue };
            for entry in array(entries) {
                self.apply(&tenant, entry);
            }
        }
        Ok(())
    }

    /// Adds tenants that appeared in `kg:tenants` and loads the newest `history` entries of
    /// each into the mirror.
    async fn load_tails(&mut self) -> Result<(), RedisCallError> {
        let all: Vec<String> =
            self.link.call(redis::cmd("SMEMBERS").arg(tenants_key()), Duration::ZERO).await?;
        for tenant in all {
            if self.tenants.contains(&tenant) {
                continue;
            }
            let keep = self.history.for_tenant(&tenant).max(1);
            let mut range = redis::cmd("XREVRANGE");
            range.arg(stream_key(&tenant)).arg("+").arg("-").arg("COUNT").arg(keep);
            let newest_first: Value = self.link.call(&range, Duration::ZERO).await?;
            let mut entries = array(newest_first);
            entries.reverse();
            let full = entries.len() >= keep;
            let mut first = true;
            for entry in entries {
                if first && full {
                    // Older entries may exist: cursors before this one get a gap notice.
                    if let Some(id) = entry_id(&entry) {
                        self.mirror.mark_dropped_before(&tenant, id);
                    }
                }
                first = false;
                self.apply(&tenant, entry);
            }
            self.tenants.insert(tenant);
        }
        Ok(())
    }

    /// Applies one stream entry `[id, [field, value, ...]]`: de-duplicated by origin, then
    /// into the mirror and, if new, the ledger.
    fn apply(&mut self, tenant: &str, entry: Value) {
        let Some(id) = entry_id(&entry) else { return };
        let mut parts = array(entry).into_iter().skip(1);
        let mut origin = None;
        let mut bytes = None;
        let mut fields = parts.next().map(array).unwrap_or_default().into_iter();
        while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
            match text(name).as_deref() {
                Some("origin") => origin = text(value).and_then(|o| parse_origin(&o)),
                Some("ev") => bytes = blob(value),
                _ => {}
            }
        }
        let (Some((node, number)), Some(bytes)) = (origin, bytes) else {
            telemetry::redis_error("read", &"stream entry without origin or ev");
            return;
        };
        let last = self.last_origin.entry((tenant.to_owned(), node)).or_default();
        if number <= *last {
            return; // a retried append stored twice
        }
        *last = number;
        match wire::decode(&bytes) {
            Ok(event) if event.tenant_id() == tenant => {
                let local = (node == self.node).then_some(number);
                // `observe` is idempotent for the same event, so an event the ledger saw
                // when it was delivered unsequenced is not counted twice.
                if self.mirror.append(id, local, event.clone()) {
                    self.ledger.observe(&event);
                }
            }
            Ok(_) => telemetry::redis_error("read", &"stream entry of another tenant"),
            Err(error) => telemetry::redis_error("read", &error),
        }
    }
}

fn array(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

fn blob(value: Value) -> Option<Vec<u8>> {
    match value {
        Value::BulkString(bytes) => Some(bytes),
        Value::SimpleString(s) => Some(s.into_bytes()),
        _ => None,
    }
}

fn text(value: Value) -> Option<String> {
    blob(value).and_then(|b| String::from_utf8(b).ok())
}

fn entry_id(entry: &Value) -> Option<Cursor> {
    match entry {
        Value::Array(parts) => match parts.first() {
            Some(Value::BulkString(id)) => Cursor::from_stream_id(std::str::from_utf8(id).ok()?),
            _ => None,
        },
        _ => None,
    }
}

fn tenant_of_key(key: &str) -> Option<String> {
    let rest = key.strip_prefix(KEY_PREFIX)?.strip_prefix(":alerts:{")?;
    rest.strip_suffix('}').map(str::to_owned)
}

fn parse_origin(origin: &str) -> Option<(u64, u64)> {
    let (node, number) = origin.split_once(':')?;
    Some((node.parse().ok()?, number.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Keys and origins read back what was written.
    #[test]
    fn names_round_trip() {
        assert_eq!(tenant_of_key(&stream_key("t-1")).as_deref(), Some("t-1"));
        assert_eq!(tenant_of_key("kg:tenants"), None);
        assert_eq!(parse_origin("12:34"), Some((12, 34)));
        assert_eq!(parse_origin("12"), None);
    }
}
