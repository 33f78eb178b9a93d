//! The alert bus: one ordered stream per tenant, a bounded history of it, and subscriptions
//! that resume from a cursor with no gap and no duplicate.
//!
//! [`AlertBus`] is the seam between screening and the supervisors' streams. On one node it is
//! [`LocalBus`]: a [`MemoryBus`] whose events are numbered as they are published. With several
//! nodes it is [`RedisBus`](crate::alert::redis_bus::RedisBus): events go to a Redis stream per
//! tenant and come back, numbered by their stream id, into a [`MemoryBus`] running as a
//! *mirror* of the stream's tail, so every node replays and resumes exactly alike.
//!
//! Every event is kept in its tenant's history (the newest `alert_history` events) and sent on
//! the tenant's `tokio::sync::broadcast` channel. A subscription is opened under the tenant's
//! lock: the broadcast receiver is created and the history is copied in the same critical
//! section, so the live receiver starts exactly after the last copied event. Replay, then
//! live, then is gap-free and duplicate-free by construction; the subscription still skips
//! live events at or below its position, which is what a mirror fed by a second reader needs.
//!
//! A mirror may also carry *unsequenced* events: while Redis is unreachable a node delivers its
//! own events to its own subscribers at once, before they have a stream id. Such a delivery
//! carries the subscriber's current position (it does not advance the cursor), and the
//! subscription remembers the event's local number; when the event later arrives from the
//! stream with its id, the subscription advances its position past it without yielding it
//! again. See the [`redis_bus`](crate::alert::redis_bus) module for what that means for a
//! supervisor who switches nodes during an outage.
//!
//! Broadcast is kept from the first hub for the same reason as before: publishing never
//! waits for a subscriber, and a subscriber that falls more than its queue behind learns how
//! many events it skipped (mini-redis `subscribe`). The lock is a `std::sync::Mutex` held for
//! a push and a non-blocking send, never across an `.await` (mini-redis `db.rs`).
//!
//! The cursor is the only thing a client keeps. It is rendered as `<major>-<minor>`: on one
//! node the bus's creation time in microseconds and the tenant's sequence number, with Redis
//! the stream id itself. Both order the same way, and clients treat it as opaque.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::alert::ack::AckLedger;
use crate::alert::{AlertFilter, HubEvent};

/// Where screening's events go and supervisors' subscriptions come from: the seam between
/// one node ([`LocalBus`]) and many ([`RedisBus`](crate::alert::redis_bus::RedisBus)).
///
/// Both feed every event they carry to the acknowledgement ledger exactly once, so that
/// acknowledgements and per-entry feedback agree on every node.
pub trait AlertBus: Send + Sync + fmt::Debug {
    /// Hands `event` to its tenant's stream; never waits. Returns its cursor when the bus
    /// numbers events at once (one node), `None` when the number comes later (Redis).
    fn publish(&self, event: HubEvent) -> Option<Cursor>;

    /// Opens a subscription to the filter's tenant, starting at `resume`.
    ///
    /// # Errors
    /// [`SubscribeError::CursorAhead`] for a cursor beyond what the bus has numbered.
    fn subscribe(
        &self,
        filter: AlertFilter,
        resume: Resume,
    ) -> Result<Subscription, SubscribeError>;
}

/// A position in one tenant's stream: the event with this id and everything before it.
///
/// Ordered by `(major, minor)`, which is the order of sequence numbers within one bus
/// instance and the order of Redis stream ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cursor {
    /// The bus instance (one node) or the stream id's milliseconds (Redis).
    major: u64,
    /// The tenant's sequence number (one node; 0 is "before any") or the stream id's
    /// sequence part (Redis).
    minor: u64,
}

impl Cursor {
    /// The sequence number within the tenant's stream (one node), or the stream id's
    /// sequence part (Redis).
    pub fn seq(&self) -> u64 {
        self.minor
    }

    /// The cursor of a Redis stream id `<ms>-<seq>`; `None` for anything else.
    pub fn from_stream_id(id: &str) -> Option<Cursor> {
        let (major, minor) = id.split_once('-')?;
        Some(Cursor { major: major.parse().ok()?, minor: minor.parse().ok()? })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.major, self.minor)
    }
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Events published from now on (no cursor given).
    Live,
    /// Everything the history still holds, then live (cursor "0").
    Oldest,
    /// Right after this cursor.
    After(Cursor),
}

impl Resume {
    /// Reads the wire form: empty is [`Resume::Live`], "0" is [`Resume::Oldest`], anything
    /// else must be a cursor this kind of bus renders.
    ///
    /// # Errors
    /// A text that is not a cursor; the message names no value.
    pub fn parse(text: &str) -> Result<Resume, &'static str> {
        match text {
            "" => Ok(Resume::Live),
            "0" => Ok(Resume::Oldest),
            _ => Cursor::from_stream_id(text)
                .map(Resume::After)
                .ok_or("is not a cursor issued by this server"),
        }
    }
}

/// Why a subscriber misses events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapReason {
    /// The resume cursor is older than the history.
    HistoryExpired,
    /// The subscriber's queue overflowed.
    SubscriberLagged,
    /// The resume cursor came from another bus instance (a restart).
    CursorUnknown,
}

/// What a subscription yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// An event that passed the filter, with its cursor.
    Event {
        /// Its position in the tenant's stream (for an unsequenced event, the subscriber's
        /// position, which it does not advance).
        cursor: Cursor,
        /// The event.
        event: HubEvent,
    },
    /// Events that will not be delivered.
    Gap {
        /// The subscriber's position after the gap is accounted for.
        cursor: Cursor,
        /// How many of the tenant's events were missed; 0 when unknown.
        missed: u64,
        /// Why.
        reason: GapReason,
    },
}

/// Why a subscription could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The cursor names a position this tenant's stream has not reached.
    #[error("cursor is ahead of the tenant's stream")]
    CursorAhead,
}

/// An event as it travels on the broadcast channel.
#[derive(Debug, Clone)]
struct Sequenced {
    /// Its position; `None` for an event delivered on its own node before it has one.
    id: Option<Cursor>,
    /// The node-local number of an event that was (or is being) delivered unsequenced.
    local: Option<u64>,
    event: HubEvent,
}

/// One tenant's stream.
#[derive(Debug)]
struct TenantStream {
    /// The last position (the zero cursor before the first event).
    head: Cursor,
    /// The newest events, oldest first, at most `history_len`.
    history: VecDeque<(Cursor, HubEvent)>,
    history_len: usize,
    /// The newest position no longer in the history, if any was dropped.
    dropped_through: Option<Cursor>,
    live: broadcast::Sender<Sequenced>,
}

impl TenantStream {
    fn new(head: Cursor, history_len: usize, queue: usize) -> Self {
        let (live, _) = broadcast::channel(queue.max(1));
        Self { head, history: VecDeque::new(), history_len, dropped_through: None, live }
    }

    fn push(&mut self, id: Cursor, event: HubEvent) {
        self.head = id;
        if self.history.len() == self.history_len
            && let Some((dropped, _)) = self.history.pop_front()
        {
            self.dropped_through = Some(dropped);
        }
        if self.history_len > 0 {
            self.history.push_back((id, event));
        } else {
            self.dropped_through = Some(id);
        }
    }
}

/// How many events each tenant's history keeps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistorySizes {
    /// For tenants without their own size.
    pub default: usize,
    /// Per-tenant sizes.
    pub tenants: HashMap<String, usize>,
}

impl HistorySizes {
    /// The history size for `tenant_id`.
    pub fn for_tenant(&self, tenant_id: &str) -> usize {
        self.tenants.get(tenant_id).copied().unwrap_or(self.default)
    }
}

/// How a [`MemoryBus`] numbers its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Numbering {
    /// It numbers them itself, under this instance (one node).
    Own { instance: u64 },
    /// They arrive numbered by a Redis stream.
    Mirror,
}

/// Per-tenant ordered event streams with bounded history; see the module docs.
#[derive(Debug)]
pub struct MemoryBus {
    numbering: Numbering,
    queue: usize,
    sizes: HistorySizes,
    tenants: Mutex<HashMap<String, TenantStream>>,
}

impl MemoryBus {
    /// A bus that numbers its own events, whose subscribers may fall `queue` events behind
    /// before they skip, and whose tenants keep `sizes` events of history.
    pub fn new(queue: usize, sizes: HistorySizes) -> Self {
        let instance =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        Self {
            numbering: Numbering::Own { instance },
            queue,
            sizes,
            tenants: Mutex::new(HashMap::new()),
        }
    }

    /// A bus whose events arrive numbered by stream ids ([`MemoryBus::append`]): the local
    /// copy of a shared stream's tail.
    pub fn mirror(queue: usize, sizes: HistorySizes) -> Self {
        Self { numbering: Numbering::Mirror, queue, sizes, tenants: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TenantStream>> {
        // A panic while holding the lock leaves the streams consistent (every mutation is a
        // push or a pop), so a poisoned lock is still safe to use.
        self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn stream<'a>(
        &self,
        tenants: &'a mut HashMap<String, TenantStream>,
        tenant_id: &str,
    ) -> &'a mut TenantStream {
        let head = match self.numbering {
            Numbering::Own { instance } => Cursor { major: instance, minor: 0 },
            Numbering::Mirror => Cursor { major: 0, minor: 0 },
        };
        tenants.entry(tenant_id.to_owned()).or_insert_with(|| {
            TenantStream::new(head, self.sizes.for_tenant(tenant_id), self.queue)
        })
    }

    /// Numbers `event` as the next of its tenant, keeps it and sends it to the live
    /// subscribers; never waits. Returns its cursor.
    ///
    /// Meant for a bus that numbers its own events; on a mirror it numbers after the head.
    pub fn publish(&self, event: HubEvent) -> Cursor {
        let mut tenants = self.lock();
        let stream = self.stream(&mut tenants, event.tenant_id());
        let id = Cursor { major: stream.head.major, minor: stream.head.minor + 1 };
        stream.push(id, event.clone());
        // An error only means nobody is subscribed right now, which is normal. Sending under
        // the lock keeps the broadcast order equal to the id order.
        let _ = stream.live.send(Sequenced { id: Some(id), local: None, event });
        id
    }

    /// Appends an event the shared stream numbered `id`; `local` is its number on this node
    /// when it was delivered here unsequenced. Events at or below the tenant's head are
    /// ignored (a re-read), so appending is idempotent. Returns whether it was new.
    pub fn append(&self, id: Cursor, local: Option<u64>, event: HubEvent) -> bool {
        let mut tenants = self.lock();
        let stream = self.stream(&mut tenants, event.tenant_id());
        if id <= stream.head {
            return false;
        }
        stream.push(id, event.clone());
        let _ = stream.live.send(Sequenced { id: Some(id), local, event });
        true
    }

    /// Marks everything before `oldest` of `tenant_id` as known to exist, though not held:
    /// after a mirror loads only the tail of a longer stream, older cursors get a gap notice.
    pub fn mark_dropped_before(&self, tenant_id: &str, oldest: Cursor) {
        let preceding = match oldest.minor {
            0 => Cursor { major: oldest.major.saturating_sub(1), minor: u64::MAX },
            n => Cursor { major: oldest.major, minor: n - 1 },
        };
        let mut tenants = self.lock();
        let stream = self.stream(&mut tenants, tenant_id);
        if stream.dropped_through.is_none_or(|d| d < preceding) {
            stream.dropped_through = Some(preceding);
        }
    }

    /// Sends `event` to the tenant's live subscribers before it has a position; see the
    /// module docs. `local` is its node-local number, which its later [`MemoryBus::append`]
    /// repeats.
    pub fn deliver_unsequenced(&self, local: u64, event: HubEvent) {
        let mut tenants = self.lock();
        let stream = self.stream(&mut tenants, event.tenant_id());
        let _ = stream.live.send(Sequenced { id: None, local: Some(local), event });
    }

    /// The newest position of every tenant seen so far.
    pub fn heads(&self) -> Vec<(String, Cursor)> {
        self.lock().iter().map(|(tenant, s)| (tenant.clone(), s.head)).collect()
    }

    /// Opens a subscription to the filter's tenant, starting at `resume`.
    ///
    /// # Errors
    /// [`SubscribeError::CursorAhead`] for a cursor of this instance beyond the stream's head
    /// (never on a mirror: another node may have numbered further already).
    pub fn subscribe(
        &self,
        filter: AlertFilter,
        resume: Resume,
    ) -> Result<Subscription, SubscribeError> {
        let mut tenants = self.lock();
        let stream = self.stream(&mut tenants, &filter.tenant_id);
        let head = stream.head;
        let zero = Cursor { major: head.major, minor: 0 };
        let (after, gap) = match (resume, self.numbering) {
            (Resume::Live, _) => (head, None),
            (Resume::Oldest, Numbering::Own { .. }) => (zero, None),
            (Resume::Oldest, Numbering::Mirror) => (Cursor { major: 0, minor: 0 }, None),
            (Resume::After(c), Numbering::Own { instance }) if c.major != instance => {
                (zero, Some((zero, 0, GapReason::CursorUnknown)))
            }
            (Resume::After(c), Numbering::Own { .. }) if c > head => {
                return Err(SubscribeError::CursorAhead);
            }
            (Resume::After(c), numbering) => match stream.dropped_through {
                Some(dropped) if c < dropped => {
                    // On one node the numbers are dense, so the loss is exact; a stream id
                    // says nothing about how many entries came before it.
                    let missed = match numbering {
                        Numbering::Own { .. } => dropped.minor - c.minor,
                        Numbering::Mirror => 0,
                    };
                    (dropped, Some((dropped, missed, GapReason::HistoryExpired)))
                }
                _ => (c, None),
            },
        };
        let mut pending = VecDeque::new();
        if let Some((cursor, missed, reason)) = gap {
            pending.push_back(Delivery::Gap { cursor, missed, reason });
        }
        pending.extend(
            stream
                .history
                .iter()
                .filter(|(id, event)| *id > after && filter.accepts_event(event))
                .map(|(id, event)| Delivery::Event { cursor: *id, event: event.clone() }),
        );
        let live = stream.live.subscribe();
        Ok(Subscription {
            filter,
            pending,
            live,
            // A mirror subscriber resuming from a cursor its node has not read yet must skip
            // up to that cursor, not just up to the head.
            position: head.max(after),
            yielded: after,
            delivered_unsequenced: HashSet::new(),
        })
    }
}

/// The one-node bus: a [`MemoryBus`] that numbers its own events, with the ledger fed as
/// events are published.
#[derive(Debug)]
pub struct LocalBus {
    bus: MemoryBus,
    ledger: Arc<AckLedger>,
}

impl LocalBus {
    /// A one-node bus; see [`MemoryBus::new`].
    pub fn new(queue: usize, sizes: HistorySizes, ledger: Arc<AckLedger>) -> Self {
        Self { bus: MemoryBus::new(queue, sizes), ledger }
    }
}

impl AlertBus for LocalBus {
    fn publish(&self, event: HubEvent) -> Option<Cursor> {
        self.ledger.observe(&event);
        Some(self.bus.publish(event))
    }

    fn subscribe(
        &self,
        filter: AlertFilter,
        resume: Resume,
    ) -> Result<Subscription, SubscribeError> {
        self.bus.subscribe(filter, resume)
    }
}

/// The most unsequenced deliveries a subscription remembers; beyond it (an outage longer
/// than the publishing node's buffer) the oldest are forgotten and their later stream copy
/// may be delivered a second time.
const MAX_UNSEQUENCED_REMEMBERED: usize = 65_536;

/// One subscriber's view of its tenant's stream: the replay, then live events, filtered.
#[derive(Debug)]
pub struct Subscription {
    filter: AlertFilter,
    /// The gap notice and replayed events not yet yielded.
    pending: VecDeque<Delivery>,
    live: broadcast::Receiver<Sequenced>,
    /// The last live position passed (yielded or filtered out); replayed events are all at
    /// or below it.
    position: Cursor,
    /// The position of the last replayed delivery yielded (the resume point before that).
    yielded: Cursor,
    /// Local numbers of events yielded before they had a position.
    delivered_unsequenced: HashSet<u64>,
}

impl Subscription {
    /// The subscriber's position after everything yielded so far: a resume from here misses
    /// nothing and repeats nothing.
    pub fn position(&self) -> Cursor {
        if self.pending.is_empty() { self.position } else { self.yielded }
    }

    /// The next delivery: replayed events first, then live ones that pass the filter, with a
    /// [`Delivery::Gap`] whenever the queue overflowed. `None` once the bus is gone.
    ///
    /// Cancel-safe: dropping the future loses nothing (it is meant for `select!` with a
    /// heartbeat timer).
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some(delivery) = self.pending.pop_front() {
            let (Delivery::Event { cursor, .. } | Delivery::Gap { cursor, .. }) = &delivery;
            self.yielded = *cursor;
            return Some(delivery);
        }
        loop {
            match self.live.recv().await {
                Ok(Sequenced { id: None, local: Some(local), event }) => {
                    if self.filter.accepts_event(&event) {
                        if self.delivered_unsequenced.len() >= MAX_UNSEQUENCED_REMEMBERED {
                            self.delivered_unsequenced.clear();
                        }
                        self.delivered_unsequenced.insert(local);
                        return Some(Delivery::Event { cursor: self.position, event });
                    }
                }
                Ok(Sequenced { id: None, local: None, .. }) => {} // never sent
                Ok(Sequenced { id: Some(id), .. }) if id <= self.position => {} // replayed
                Ok(Sequenced { id: Some(id), local, event }) => {
                    self.position = id;
                    let already = local.is_some_and(|l| self.delivered_unsequenced.remove(&l));
                    if !already && self.filter.accepts_event(&event) {
                        return Some(Delivery::Event { cursor: id, event });
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    return Some(Delivery::Gap {
                        cursor: self.position,
                        missed,
                        reason: GapReason::SubscriberLagged,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::tests_support::numbered;

    fn tenant() -> AlertFilter {
        AlertFilter { tenant_id: "t1".into(), ..AlertFilter::default() }
    }

    fn id(ms: u64, n: u64) -> Cursor {
        Cursor { major: ms, minor: n }
    }

    /// The alert id of a delivery and its cursor.
    fn got(delivery: Option<Delivery>) -> (String, Cursor) {
        match delivery {
            Some(Delivery::Event { event: HubEvent::Alert(a), cursor }) => {
                (a.alert_id.clone(), cursor)
            }
            other => (format!("not an alert: {other:?}"), id(0, 0)),
        }
    }

    /// A mirror replays by stream id, ignores re-reads, and accepts a cursor it has not
    /// reached (another node numbered it), skipping up to it.
    #[tokio::test]
    async fn mirror_orders_by_stream_id() {
        let bus = MemoryBus::mirror(8, HistorySizes { default: 8, ..HistorySizes::default() });
        assert!(bus.append(id(5, 0), None, HubEvent::Alert(numbered("a", &[]))));
        assert!(bus.append(id(5, 1), None, HubEvent::Alert(numbered("b", &[]))));
        assert!(!bus.append(id(5, 1), None, HubEvent::Alert(numbered("b", &[]))), "re-read");
        let mut s = bus.subscribe(tenant(), Resume::parse("5-0").expect("id")).expect("sub");
        assert_eq!(got(s.next().await), ("b".into(), id(5, 1)));
        let mut ahead = bus.subscribe(tenant(), Resume::After(id(9, 0))).expect("ahead is fine");
        bus.append(id(9, 0), None, HubEvent::Alert(numbered("c", &[])));
        bus.append(id(9, 1), None, HubEvent::Alert(numbered("d", &[])));
        assert_eq!(got(ahead.next().await).0, "d", "help: 9-0 was already seen elsewhere");
        assert_eq!(got(s.next().await).0, "c");
    }

    /// An event delivered unsequenced keeps the cursor where it was, and its later stream
    /// copy is passed over (position advanced) rather than yielded twice; a subscriber that
    /// opened in between gets the stream copy.
    #[tokio::test]
    async fn unsequenced_then_sequenced_is_delivered_once() {
        let bus = MemoryBus::mirror(8, HistorySizes { default: 8, ..HistorySizes::default() });
        bus.append(id(1, 0), None, HubEvent::Alert(numbered("a", &[])));
        let mut early = bus.subscribe(tenant(), Resume::Live).expect("early");
        bus.deliver_unsequenced(7, HubEvent::Alert(numbered("x", &[])));
        let mut late = bus.subscribe(tenant(), Resume::Live).expect("late");
        assert_eq!(got(early.next().await), ("x".into(), id(1, 0)), "help: cursor unchanged");
        bus.append(id(2, 0), Some(7), HubEvent::Alert(numbered("x", &[])));
        bus.append(id(2, 1), None, HubEvent::Alert(numbered("y", &[])));
        assert_eq!(got(early.next().await), ("y".into(), id(2, 1)));
        assert_eq!(got(late.next().await), ("x".into(), id(2, 0)));
        assert_eq!(got(late.next().await), ("y".into(), id(2, 1)));
    }
}
