//! The alert bus: one ordered stream per tenant, a bounded history of it, and subscriptions
//! that resume from a cursor with no gap and no duplicate.
//!
//! Every published event gets the next sequence number of its tenant and is kept in that
//! tenant's history (the newest `alert_history` events) and sent on the tenant's
//! `tokio::sync::broadcast` channel. A subscription is opened under the tenant's lock: the
//! broadcast receiver is created and the history is copied in the same critical section, so
//! the live receiver starts exactly after the last copied event. Replay, then live, then is
//! gap-free and duplicate-free by construction; the subscription still skips live events at
//! or below its position, which costs nothing here and is what a bus whose history and live
//! feed are two reads (Redis `XRANGE` then `XREAD`) needs.
//!
//! Broadcast is kept from the first hub for the same reason as before: publishing never
//! waits for a subscriber, and a subscriber that falls more than its queue behind learns how
//! many events it skipped (mini-redis `subscribe`). The lock is a `std::sync::Mutex` held for
//! a push and a non-blocking send, never across an `.await` (mini-redis `db.rs`).
//!
//! The cursor is the only thing a client keeps. It is rendered as `<instance>-<sequence>`
//! (the instance is the bus's creation time in microseconds, hex), close to a Redis stream
//! id, and documented as opaque so that a shared bus can hand out real stream ids.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::alert::{AlertFilter, HubEvent};

/// A position in one tenant's stream: the event with this sequence number and everything
/// before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// The bus instance that issued it; sequences restart with a new instance.
    instance: u64,
    /// The tenant's event sequence number (1 is the first event; 0 is "before any").
    seq: u64,
}

impl Cursor {
    /// The sequence number within the tenant's stream.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}-{}", self.instance, self.seq)
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
            "" => return Ok(Resume::Live),
            "0" => return Ok(Resume::Oldest),
            _ => {}
        }
        let (instance, seq) =
            text.split_once('-').ok_or("is not a cursor issued by this server")?;
        let instance = u64::from_str_radix(instance, 16);
        let seq = seq.parse::<u64>();
        match (instance, seq) {
            (Ok(instance), Ok(seq)) => Ok(Resume::After(Cursor { instance, seq })),
            _ => Err("is not a cursor issued by this server"),
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
        /// Its position in the tenant's stream.
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

/// An event and its tenant sequence number, as it travels on the broadcast channel.
#[derive(Debug, Clone)]
struct Sequenced {
    seq: u64,
    event: HubEvent,
}

/// One tenant's stream.
#[derive(Debug)]
struct TenantStream {
    /// The last sequence number handed out (0 before the first event).
    head: u64,
    /// The newest events, oldest first, at most `history_len`.
    history: VecDeque<Sequenced>,
    history_len: usize,
    live: broadcast::Sender<Sequenced>,
}

impl TenantStream {
    fn new(history_len: usize, queue: usize) -> Self {
        let (live, _) = broadcast::channel(queue.max(1));
        Self { head: 0, history: VecDeque::new(), history_len, live }
    }

    /// The oldest sequence number still in the history (head + 1 when it is empty).
    fn oldest(&self) -> u64 {
        self.history.front().map_or(self.head + 1, |e| e.seq)
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

/// Per-tenant ordered event streams with bounded history; see the module docs.
#[derive(Debug)]
pub struct AlertBus {
    instance: u64,
    queue: usize,
    sizes: HistorySizes,
    tenants: Mutex<HashMap<String, TenantStream>>,
}

impl AlertBus {
    /// A bus whose subscribers may fall `queue` events behind before they skip, and whose
    /// tenants keep `sizes` events of history.
    pub fn new(queue: usize, sizes: HistorySizes) -> Self {
        let instance =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        Self { instance, queue, sizes, tenants: Mutex::new(HashMap::new()) }
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
        if !tenants.contains_key(tenant_id) {
            let stream = TenantStream::new(self.sizes.for_tenant(tenant_id), self.queue);
            tenants.insert(tenant_id.to_owned(), stream);
        }
        // Just inserted when it was missing.
        tenants.get_mut(tenant_id).expect("tenant stream exists")
    }

    fn cursor(&self, seq: u64) -> Cursor {
        Cursor { instance: self.instance, seq }
    }

    /// Appends `event` to its tenant's stream and sends it to the live subscribers; never
    /// waits. Returns the event's cursor.
    pub fn publish(&self, event: HubEvent) -> Cursor {
        let mut tenants = self.lock();
        let stream = self.stream(&mut tenants, event.tenant_id());
        stream.head += 1;
        let sequenced = Sequenced { seq: stream.head, event };
        if stream.history_len > 0 {
            if stream.history.len() == stream.history_len {
                stream.history.pop_front();
            }
            stream.history.push_back(sequenced.clone());
        }
        // An error only means nobody is subscribed right now, which is normal. Sending under
        // the lock keeps the broadcast order equal to the sequence order.
        let _ = stream.live.send(sequenced);
        self.cursor(stream.head)
    }

    /// Opens a subscription to the filter's tenant, starting at `resume`.
    ///
    /// # Errors
    /// [`SubscribeError::CursorAhead`] for a cursor of this instance beyond the stream's head.
    pub fn subscribe(
        &self,
        filter: AlertFilter,
        resume: Resume,
    ) -> Result<Subscription, SubscribeError> {
        let mut tenants = self.lock();
        let stream = self.stream(&mut tenants, &filter.tenant_id);
        let head = stream.head;
        let oldest = stream.oldest();
        let (after, gap) = match resume {
            Resume::Live => (head, None),
            Resume::Oldest => (0, None),
            Resume::After(c) if c.instance != self.instance => {
                (0, Some((self.cursor(0), 0, GapReason::CursorUnknown)))
            }
            Resume::After(c) if c.seq > head => return Err(SubscribeError::CursorAhead),
            Resume::After(c) => {
                let lost = (oldest - 1).saturating_sub(c.seq);
                let gap =
                    (lost > 0).then(|| (self.cursor(oldest - 1), lost, GapReason::HistoryExpired));
                (c.seq, gap)
            }
        };
        let mut pending = VecDeque::new();
        if let Some((cursor, missed, reason)) = gap {
            pending.push_back(Delivery::Gap { cursor, missed, reason });
        }
        pending.extend(
            stream
                .history
                .iter()
                .filter(|e| e.seq > after && filter.accepts_event(&e.event))
                .map(|e| Delivery::Event { cursor: self.cursor(e.seq), event: e.event.clone() }),
        );
        let live = stream.live.subscribe();
        Ok(Subscription {
            instance: self.instance,
            filter,
            pending,
            live,
            position: head,
            yielded: after,
        })
    }
}

/// One subscriber's view of its tenant's stream: the replay, then live events, filtered.
#[derive(Debug)]
pub struct Subscription {
    instance: u64,
    filter: AlertFilter,
    /// The gap notice and replayed events not yet yielded.
    pending: VecDeque<Delivery>,
    live: broadcast::Receiver<Sequenced>,
    /// The last live sequence number passed (yielded or filtered out); replayed events are
    /// all at or below it.
    position: u64,
    /// The position of the last replayed delivery yielded (the resume point before that).
    yielded: u64,
}

impl Subscription {
    /// The subscriber's position after everything yielded so far: a resume from here misses
    /// nothing and repeats nothing.
    pub fn position(&self) -> Cursor {
        let seq = if self.pending.is_empty() { self.position } else { self.yielded };
        Cursor { instance: self.instance, seq }
    }

    /// The next delivery: replayed events first, then live ones that pass the filter, with a
    /// [`Delivery::Gap`] whenever the queue overflowed. `None` once the bus is gone.
    ///
    /// Cancel-safe: dropping the future loses nothing (it is meant for `select!` with a
    /// heartbeat timer).
    pub async fn next(&mut self) -> Option<Delivery> {
        if let Some(delivery) = self.pending.pop_front() {
            let (Delivery::Event { cursor, .. } | Delivery::Gap { cursor, .. }) = &delivery;
            self.yielded = cursor.seq;
            return Some(delivery);
        }
        loop {
            match self.live.recv().await {
                Ok(e) if e.seq <= self.position => {} // already replayed
                Ok(e) => {
                    self.position = e.seq;
                    if self.filter.accepts_event(&e.event) {
                        let cursor = Cursor { instance: self.instance, seq: e.seq };
                        return Some(Delivery::Event { cursor, event: e.event });
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    let cursor = Cursor { instance: self.instance, seq: self.position };
                    return Some(Delivery::Gap {
                        cursor,
                        missed,
                        reason: GapReason::SubscriberLagged,
                    });
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}
