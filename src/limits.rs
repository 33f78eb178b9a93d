//! Admission limits, so that one client or tenant cannot crowd out the others: open
//! conversations in total and per tenant, one live stream per conversation id, and segments per
//! second per conversation, supervisor subscriptions per tenant, and the size of one gRPC
//! message (enforced by tonic's decoder, see [`Limits::max_message_bytes`]). Each breach is a precise error (`ALREADY_EXISTS`,
//! `RESOURCE_EXHAUSTED`) for that stream alone; nothing else is disturbed.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::time::Instant;

use crate::error::ScreenError;

/// The limits, from configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open `Screen` conversations on this node, all tenants together.
    pub max_open_conversations: usize,
    /// Open conversations of one tenant.
    pub max_open_per_tenant: usize,
    /// Segments (interim and final) one conversation may send per second, sustained; the same
    /// number may arrive at once as a burst.
    pub max_segments_per_second: u32,
    /// Open alert subscriptions (gRPC `Subscribe` and console event streams) of one tenant.
    pub max_subscribers_per_tenant: usize,
    /// The largest gRPC message the server decodes; tonic refuses a bigger one with
    /// RESOURCE_EXHAUSTED before allocating for it.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    /// Far above a busy contact centre's needs per node (a few thousand calls, a few segments
    /// per second each), low enough to stop a runaway client.
    fn default() -> Self {
        Self {
            max_open_conversations: 50_000,
            max_open_per_tenant: 20_000,
            max_segments_per_second: 50,
            // A floor's supervisors, wallboards and a few integrations; each subscription
            // holds a task and a bus cursor, so a runaway reconnect loop must stop somewhere.
            max_subscribers_per_tenant: 200,
            // The largest legal message is a segment of 4 KiB of text plus ids of at most
            // 128 bytes each; 64 KiB leaves room for new fields and refuses a megabyte before
            // it is decoded (tonic's own default is 4 MiB).
            max_message_bytes: 64 * 1024,
        }
    }
}

/// The conversations open on this node, by (tenant, conversation id).
#[derive(Debug)]
pub struct LiveConversations {
    limits: Limits,
    open: Mutex<Open>,
}

#[derive(Debug, Default)]
struct Open {
    ids: HashSet<(String, String)>,
    per_tenant: HashMap<String, usize>,
}

impl LiveConversations {
    /// No conversation open yet.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { limits, open: Mutex::new(Open::default()) })
    }

    /// Admits a conversation; it stays open until the returned guard is dropped.
    ///
    /// # Errors
    /// `AlreadyExists` when the id is live on another stream; `ResourceExhausted` when the node
    /// or the tenant is at its limit.
    pub fn open(
        self: &Arc<Self>,
        tenant_id: &str,
        conversation_id: &str,
    ) -> Result<LiveGuard, ScreenError> {
        // The lock guards plain counters and is never held across an await.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (tenant_id.to_owned(), conversation_id.to_owned());
        if open.ids.contains(&key) {
            return Err(ScreenError::AlreadyExists {
                field: "start.conversation_id",
                description: "a conversation with this id is already being screened".into(),
            });
        }
        if open.ids.len() >= self.limits.max_open_conversations {
            return Err(ScreenError::ResourceExhausted {
                field: "start",
                description: format!(
                    "this node has {} open conversations, its limit",
                    self.limits.max_open_conversations
                ),
            });
        }
        let tenant_open = open.per_tenant.get(tenant_id).copied().unwrap_or(0);
        if tenant_open >= self.limits.max_open_per_tenant {
            return Err(ScreenError::ResourceExhausted {
                field: "start.tenant_id",
                description: format!(
                    "the tenant has {} open conversations, its limit",
                    self.limits.max_open_per_tenant
                ),
            });
        }
        open.ids.insert(key.clone());
        *open.per_tenant.entry(key.0.clone()).or_default() += 1;
        Ok(LiveGuard { live: Arc::clone(self), key })
    }

    /// Conversations open now.
    pub fn len(&self) -> usize {
        self.open.lock().unwrap_or_else(PoisonError::into_inner).ids.len()
    }

    /// No conversation is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The per-conversation segment rate limiter these limits call for.
    pub fn segment_rate(&self) -> SegmentRate {
        SegmentRate::new(self.limits.max_segments_per_second)
    }
}

/// An admitted conversation; dropping it closes the conversation's slot.
#[derive(Debug)]
pub struct LiveGuard {
    live: Arc<LiveConversations>,
    key: (String, String),
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut open = self.live.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.ids.remove(&self.key);
        if let Some(n) = open.per_tenant.get_mut(&self.key.0) {
            *n -= 1;
            if *n == 0 {
                open.per_tenant.remove(&self.key.0);
            }
        }
    }
}

/// Open alert subscriptions by tenant.
#[derive(Debug)]
pub struct SubscriberSlots {
    max_per_tenant: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl SubscriberSlots {
    /// No subscription open yet.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self { max_per_tenant: limits.max_subscribers_per_tenant, open: Mutex::default() })
    }

    /// Takes a slot for one of `tenant_id`'s subscriptions until the guard is dropped.
    ///
    /// # Errors
    /// `ResourceExhausted` on `tenant_id` when the tenant has its maximum open.
    pub fn open(self: &Arc<Self>, tenant_id: &str) -> Result<SubscriberSlot, ScreenError> {
        // The lock guards a counter map and is never held across an await.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(tenant_id.to_owned()).or_default();
        if *count >= self.max_per_tenant {
            return Err(ScreenError::ResourceExhausted {
                field: "tenant_id",
                description: format!(
                    "the tenant has {} open alert subscriptions, its limit",
                    self.max_per_tenant
                ),
            });
        }
        *count += 1;
        Ok(SubscriberSlot { slots: Arc::clone(self), tenant_id: tenant_id.to_owned() })
    }
}

/// One open subscription's slot; dropping it frees the slot.
#[derive(Debug)]
pub struct SubscriberSlot {
    slots: Arc<SubscriberSlots>,
    tenant_id: String,
}

impl Drop for SubscriberSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.tenant_id) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.tenant_id);
            }
        }
    }
}

/// A token bucket over tokio's clock (so tests can pause time): `per_second` tokens a second,
/// at most `per_second` saved up.
#[derive(Debug)]
pub struct SegmentRate {
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl SegmentRate {
    fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second.max(1));
        Self { per_second, tokens: per_second, last: Instant::now() }
    }

    /// Takes one token for a segment.
    ///
    /// # Errors
    /// `ResourceExhausted` when the conversation sends faster than its limit.
    pub fn admit(&mut self) -> Result<(), ScreenError> {
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.per_second);
        self.last = now;
        if self.tokens < 1.0 {
            return Err(ScreenError::ResourceExhausted {
                field: "segment",
                description: format!(
                    "more than {} segments per second on one conversation",
                    self.per_second
                ),
            });
        }
        self.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(total: usize, per_tenant: usize) -> Limits {
        Limits {
            max_open_conversations: total,
            max_open_per_tenant: per_tenant,
            max_segments_per_second: 5,
            ..Limits::default()
        }
    }

    /// The subscriber limit stops only that tenant, and a dropped slot is free again.
    #[test]
    fn subscriber_slots_per_tenant() {
        let slots = SubscriberSlots::new(Limits { max_subscribers_per_tenant: 2, ..limits(1, 1) });
        let a1 = slots.open("a").expect("a1");
        let _a2 = slots.open("a").expect("a2");
        let err = slots.open("a").expect_err("tenant full");
        assert!(matches!(err, ScreenError::ResourceExhausted { field: "tenant_id", .. }));
        let _b = slots.open("b").expect("other tenant");
        drop(a1);
        slots.open("a").expect("free again");
    }

    /// A live id cannot be opened twice; once its guard drops it can.
    #[test]
    fn one_live_stream_per_conversation_id() {
        let live = LiveConversations::new(Limits::default());
        let first = live.open("t", "c1").expect("first");
        let err = live.open("t", "c1").expect_err("duplicate");
        assert!(matches!(err, ScreenError::AlreadyExists { .. }), "help: got {err:?}");
        live.open("other-tenant", "c1").expect("ids are per tenant");
        drop(first);
        live.open("t", "c1").expect("free again");
    }

    /// The tenant limit stops only that tenant; the node limit stops everyone.
    #[test]
    fn tenant_and_node_limits() {
        let live = LiveConversations::new(limits(3, 2));
        let _a = live.open("a", "1").expect("a1");
        let _b = live.open("a", "2").expect("a2");
        let err = live.open("a", "3").expect_err("tenant full");
        assert!(matches!(err, ScreenError::ResourceExhausted { field: "start.tenant_id", .. }));
        let _c = live.open("b", "1").expect("other tenant");
        let err = live.open("c", "1").expect_err("node full");
        assert!(matches!(err, ScreenError::ResourceExhausted { field: "start", .. }));
        assert_eq!(live.len(), 3);
    }

    /// A burst of the limit passes, the next segment is refused, and time refills the bucket.
    #[tokio::test(start_paused = true)]
    async fn segment_rate_refills_over_time() {
        let mut rate = LiveConversations::new(limits(10, 10)).segment_rate();
        for _ in 0..5 {
            rate.admit().expect("within the burst");
        }
        assert!(rate.admit().is_err(), "help: the sixth segment in no time is over the limit");
        tokio::time::advance(Duration::from_millis(400)).await;
        rate.admit().expect("two tokens back after 400 ms");
        rate.admit().expect("two tokens back after 400 ms");
        assert!(rate.admit().is_err());
    }
}
