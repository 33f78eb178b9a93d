//! Repeat callers: what each customer raised in their earlier contacts, so PERSISTENCE can span
//! conversations ("a customer's 3rd or later contact within 24 hours that repeats a demand
//! already alerted"; "the same demand raised for the 4th time within one customer's contacts").
//!
//! [`CallState`] is the seam between one node and many: [`CallerHistory`] keeps it in memory
//! for one node (keyed by (tenant, customer id), pruned by the tenant's window on every
//! access); [`redis::RedisCallState`] shares it through Redis, with a `CallerHistory` as its
//! local copy. A std `Mutex` suffices: it is held for a few map operations and never across an
//! `.await`.

pub mod redis;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::conversation::{ConversationInfo, ConversationSnapshot};

/// What a conversation shares with the other nodes: the customer's contacts (repeat
/// callers) and its own snapshot, so it can continue on another node.
///
/// Only [`CallState::prepare`] may wait (once, when a conversation opens, bounded by the
/// Redis timeout); the per-segment methods never wait: a shared implementation writes
/// behind.
pub trait CallState: Send + Sync + fmt::Debug {
    /// Before `info`'s conversation opens: learns what other nodes know of the customer's
    /// contacts within `window`, and returns the conversation's snapshot if another node
    /// saved one.
    fn prepare<'a>(
        &'a self,
        info: &'a ConversationInfo,
        window: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<ConversationSnapshot>> + Send + 'a>>;

    /// Records the start of a contact (again: idempotent per conversation) and returns its
    /// position within `window`.
    fn open(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        started_at: SystemTime,
        window: Duration,
    ) -> u32;

    /// Counts one final segment raising `family` in this contact, and reports what earlier
    /// contacts in the window did with the same family.
    fn record(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        family: &str,
        alerted: bool,
    ) -> Earlier;

    /// Whether [`CallState::save_snapshot`] keeps anything, so conversations build
    /// snapshots only when they are used.
    fn keeps_snapshots(&self) -> bool;

    /// Keeps the snapshot of a conversation after a final segment, for `ttl`; never waits.
    fn save_snapshot(&self, snapshot: &ConversationSnapshot, ttl: Duration);

    /// Forgets a conversation's snapshot: it ended for good.
    fn drop_snapshot(&self, tenant_id: &str, conversation_id: &str);
}

/// The most contacts kept per customer; older ones are dropped first. A customer calling more
/// often than this within a window is already far past every threshold.
const MAX_CONTACTS_PER_CUSTOMER: usize = 64;

#[derive(Debug, Default)]
struct Contact {
    conversation_id: String,
    started_at: Option<SystemTime>,
    /// Final segments that raised each family in this contact.
    family_counts: HashMap<String, u32>,
    /// Families that were alerted (by any alert) in this contact.
    alerted: HashSet<String>,
}

/// What a customer's earlier contacts (within the window) say about one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Earlier {
    /// This contact's position among the customer's contacts in the window (1 = first).
    pub contact_number: u32,
    /// Final segments of earlier contacts that raised the family.
    pub family_count: u32,
    /// Whether an earlier contact was alerted with this family.
    pub alerted_before: bool,
}

/// Every customer's recent contacts.
#[derive(Debug, Default)]
pub struct CallerHistory {
    customers: Mutex<HashMap<(String, String), Vec<Contact>>>,
}

impl CallerHistory {
    /// Records the start of a contact and returns its position within `window`.
    pub fn open(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        started_at: SystemTime,
        window: Duration,
    ) -> u32 {
        let mut customers = self.customers.lock().unwrap_or_else(|p| p.into_inner());
        let contacts = customers.entry((tenant_id.to_owned(), customer_id.to_owned())).or_default();
        contacts.retain(|c| within(c.started_at, started_at, window));
        // A conversation reconnected (or seeded from Redis) keeps its place.
        if let Some(i) = contacts.iter().position(|c| c.conversation_id == conversation_id) {
            return i as u32 + 1;
        }
        if contacts.len() >= MAX_CONTACTS_PER_CUSTOMER {
            contacts.remove(0);
        }
        contacts.push(Contact {
            conversation_id: conversation_id.to_owned(),
            started_at: Some(started_at),
            ..Contact::default()
        });
        contacts.len() as u32
    }

    /// Counts one final segment raising `family` in this contact (and whether it was alerted),
    /// and reports what earlier contacts in the window did with the same family.
    pub fn record(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        family: &str,
        alerted: bool,
    ) -> Earlier {
        let mut customers = self.customers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(contacts) = customers.get_mut(&(tenant_id.to_owned(), customer_id.to_owned()))
        else {
            return Earlier::default();
        };
        let mut earlier = Earlier::default();
        for (i, contact) in contacts.iter_mut().enumerate() {
            if contact.conversation_id == conversation_id {
                earlier.contact_number = i as u32 + 1;
                *contact.family_counts.entry(family.to_owned()).or_default() += 1;
                if alerted {
                    contact.alerted.insert(family.to_owned());
                }
            } else {
                earlier.family_count += contact.family_counts.get(family).copied().unwrap_or(0);
                earlier.alerted_before |= contact.alerted.contains(family);
            }
        }
        earlier
    }

    /// Marks `family` alerted in this contact (an alert raised after the family was counted).
    pub fn mark_alerted(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        family: &str,
    ) {
        let mut customers = self.customers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(contacts) = customers.get_mut(&(tenant_id.to_owned(), customer_id.to_owned()))
            && let Some(c) = contacts.iter_mut().find(|c| c.conversation_id == conversation_id)
        {
            c.alerted.insert(family.to_owned());
        }
    }
}

/// One contact as another node recorded it, for [`CallerHistory::seed`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SharedContact {
    /// Its conversation.
    pub conversation_id: String,
    /// When it started.
    pub started_at: Option<SystemTime>,
    /// Final segments that raised each family in it.
    pub family_counts: HashMap<String, u32>,
    /// Families alerted in it.
    pub alerted: HashSet<String>,
}

impl CallerHistory {
    /// Replaces what this node knows of a customer's contacts with the shared view (oldest
    /// first), keeping the larger count where this node counted more (writes not yet
    /// flushed).
    pub fn seed(&self, tenant_id: &str, customer_id: &str, shared: Vec<SharedContact>) {
        let mut customers = self.customers.lock().unwrap_or_else(|p| p.into_inner());
        let key = (tenant_id.to_owned(), customer_id.to_owned());
        let mut known = customers.remove(&key).unwrap_or_default();
        let mut contacts: Vec<Contact> = shared
            .into_iter()
            .map(|c| {
                let mut contact = Contact {
                    conversation_id: c.conversation_id,
                    started_at: c.started_at,
                    family_counts: c.family_counts,
                    alerted: c.alerted,
                };
                if let Some(local) =
                    known.iter_mut().find(|k| k.conversation_id == contact.conversation_id)
                {
                    for (family, n) in local.family_counts.drain() {
                        let count = contact.family_counts.entry(family).or_default();
                        *count = (*count).max(n);
                    }
                    contact.alerted.extend(local.alerted.drain());
                }
                contact
            })
            .collect();
        contacts.truncate(MAX_CONTACTS_PER_CUSTOMER);
        customers.insert(key, contacts);
    }
}

impl CallState for CallerHistory {
    fn prepare<'a>(
        &'a self,
        _info: &'a ConversationInfo,
        _window: Duration,
    ) -> Pin<Box<dyn Future<Output = Option<ConversationSnapshot>> + Send + 'a>> {
        // One node knows everything already, and a conversation cannot move to another node.
        Box::pin(std::future::ready(None))
    }

    fn open(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        started_at: SystemTime,
        window: Duration,
    ) -> u32 {
        CallerHistory::open(self, tenant_id, customer_id, conversation_id, started_at, window)
    }

    fn record(
        &self,
        tenant_id: &str,
        customer_id: &str,
        conversation_id: &str,
        family: &str,
        alerted: bool,
    ) -> Earlier {
        CallerHistory::record(self, tenant_id, customer_id, conversation_id, family, alerted)
    }

    fn keeps_snapshots(&self) -> bool {
        false
    }

    fn save_snapshot(&self, _snapshot: &ConversationSnapshot, _ttl: Duration) {}

    fn drop_snapshot(&self, _tenant_id: &str, _conversation_id: &str) {}
}

fn within(then: Option<SystemTime>, now: SystemTime, window: Duration) -> bool {
    then.is_some_and(|t| now.duration_since(t).map_or(true, |age| age <= window))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    /// Contacts are numbered within the window, and families counted across them.
    #[test]
    fn counts_across_contacts() {
        let h = CallerHistory::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(h.open("t", "c", "a", t0, DAY), 1);
        h.record("t", "c", "a", "refund", true);
        assert_eq!(h.open("t", "c", "b", t0 + Duration::from_secs(3600), DAY), 2);
        let e = h.record("t", "c", "b", "refund", false);
        assert_eq!(e, Earlier { contact_number: 2, family_count: 1, alerted_before: true });
        // Another tenant's customer of the same id is someone else.
        assert_eq!(h.open("u", "c", "x", t0, DAY), 1);
    }

    /// Contacts older than the window no longer count.
    #[test]
    fn window_expires() {
        let h = CallerHistory::default();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        h.open("t", "c", "a", t0, DAY);
        h.record("t", "c", "a", "refund", true);
        assert_eq!(h.open("t", "c", "b", t0 + DAY * 2, DAY), 1);
        let e = h.record("t", "c", "b", "refund", false);
        assert!(!e.alerted_before);
    }
}
