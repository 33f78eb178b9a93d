//! Alerts and their fan-out to supervisors.
//!
//! Screening publishes every alert once into the [`AlertHub`], a `tokio::sync::broadcast`
//! channel; each `Subscribe` stream holds a receiver and applies its own filter. Broadcast fits
//! the need exactly: publishing never waits for a subscriber (ingest must not slow down because a
//! supervisor's browser is slow), and a subscriber that falls more than the channel's capacity
//! behind is told how many alerts it missed instead of holding memory for it (the same trade as
//! mini-redis's `subscribe`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;

use crate::pipeline::Evidence;
use crate::policy::{Category, Severity};

/// One alert raised for one segment of one conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Opaque unique id.
    pub alert_id: String,
    /// The conversation, as the platform named it; empty for a lone text.
    pub conversation_id: String,
    /// The tenant the conversation belongs to.
    pub tenant_id: String,
    /// The queue the conversation came in on.
    pub queue: String,
    /// The agent on the conversation.
    pub agent_id: String,
    /// The segment that raised it.
    pub seq: u64,
    /// The policy category.
    pub category: Category,
    /// Its severity.
    pub severity: Severity,
    /// The words behind it.
    pub evidence: Vec<Evidence>,
    /// When it was raised.
    pub created_at: SystemTime,
    /// Confirmed, provisional or retracted.
    pub status: AlertStatus,
    /// The alert this one escalates (same category, lower severity), if any.
    pub previous_alert_id: Option<String>,
    /// The conversation's risk score after this alert, in [0, 1].
    pub risk_score: f64,
}

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertStatus {
    /// Raised from final text.
    Confirmed,
    /// Raised from an interim hypothesis, awaiting the final text.
    Provisional,
    /// A provisional alert the final text did not bear out.
    Retracted,
}

/// What a conversation amounted to, when it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// The conversation.
    pub conversation_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its queue.
    pub queue: String,
    /// Categories alerted (confirmed), in policy order.
    pub categories: Vec<Category>,
    /// The highest confirmed severity.
    pub peak_severity: Option<Severity>,
    /// Confirmed alert ids, in order.
    pub alert_ids: Vec<String>,
    /// First segment start to last segment end, in ms.
    pub duration_ms: u64,
    /// Segments received.
    pub segments: u64,
    /// Final risk score.
    pub risk_score: f64,
    /// "end", "closed" or "idle".
    pub reason: &'static str,
}

/// One event for supervisors.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    /// A new alert (confirmed or provisional).
    Alert(Arc<Alert>),
    /// A provisional alert confirmed or retracted by the segment `seq`.
    Update(Arc<Alert>, u64),
    /// A conversation ended.
    Summary(Arc<Summary>),
}

impl HubEvent {
    /// The tenant the event belongs to.
    pub fn tenant_id(&self) -> &str {
        match self {
            HubEvent::Alert(a) | HubEvent::Update(a, _) => &a.tenant_id,
            HubEvent::Summary(s) => &s.tenant_id,
        }
    }
}

/// Makes alert ids that are unique within a process and unlikely to repeat across restarts:
/// the start time in microseconds, then a counter.
#[derive(Debug)]
pub struct AlertIds {
    epoch: u64,
    next: AtomicU64,
}

impl Default for AlertIds {
    fn default() -> Self {
        let epoch =
            SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        Self { epoch, next: AtomicU64::new(1) }
    }
}

impl AlertIds {
    /// The next id, e.g. `al-18f3a2b4c5d6-000001`.
    pub fn next_id(&self) -> String {
        // Relaxed is enough: only uniqueness matters, not ordering with other memory.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("al-{:x}-{n:06}", self.epoch)
    }
}

/// Fan-out of alerts from screening to every subscriber.
#[derive(Debug, Clone)]
pub struct AlertHub {
    sender: broadcast::Sender<HubEvent>,
}

impl AlertHub {
    /// A hub whose subscribers may fall `capacity` alerts behind before they skip.
    pub fn new(capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity.max(1));
        Self { sender }
    }

    /// Publishes an event to every current subscriber; never waits.
    pub fn publish(&self, event: HubEvent) {
        // An error only means nobody is subscribed right now, which is normal.
        let _ = self.sender.send(event);
        crate::telemetry::alert_backlog(self.sender.len());
    }

    /// A new subscription that sees events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.sender.subscribe()
    }
}

/// What a supervisor asked to see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertFilter {
    /// Only this tenant's alerts (required).
    pub tenant_id: String,
    /// Only at or above this severity.
    pub min_severity: Option<Severity>,
    /// Only these categories; empty means all.
    pub categories: Vec<Category>,
}

impl AlertFilter {
    /// Whether `alert` passes the filter.
    pub fn accepts(&self, alert: &Alert) -> bool {
        alert.tenant_id == self.tenant_id
            && self.min_severity.is_none_or(|min| alert.severity >= min)
            && (self.categories.is_empty() || self.categories.contains(&alert.category))
    }

    /// Whether `event` passes the filter; summaries pass on tenant alone.
    pub fn accepts_event(&self, event: &HubEvent) -> bool {
        match event {
            HubEvent::Alert(a) | HubEvent::Update(a, _) => self.accepts(a),
            HubEvent::Summary(s) => s.tenant_id == self.tenant_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(tenant: &str, category: Category, severity: Severity) -> Alert {
        Alert {
            alert_id: "a".into(),
            conversation_id: "c".into(),
            tenant_id: tenant.into(),
            queue: String::new(),
            agent_id: String::new(),
            seq: 1,
            category,
            severity,
            evidence: Vec::new(),
            created_at: SystemTime::UNIX_EPOCH,
            status: AlertStatus::Confirmed,
            previous_alert_id: None,
            risk_score: 0.0,
        }
    }

    /// Filters apply tenant, minimum severity and categories together.
    #[test]
    fn filter_rows() {
        let f = AlertFilter {
            tenant_id: "t1".into(),
            min_severity: Some(Severity::High),
            categories: vec![Category::Attack],
        };
        for (a, want) in [
            (alert("t1", Category::Attack, Severity::High), true),
            (alert("t1", Category::Attack, Severity::Critical), true),
            (alert("t2", Category::Attack, Severity::Critical), false),
            (alert("t1", Category::Attack, Severity::Medium), false),
            (alert("t1", Category::Dogeza, Severity::High), false),
        ] {
            assert_eq!(f.accepts(&a), want, "help: {a:?}");
        }
    }

    /// Publishing without subscribers is fine, and a subscriber sees what follows.
    #[tokio::test]
    async fn hub_fans_out() {
        let hub = AlertHub::new(8);
        hub.publish(HubEvent::Alert(Arc::new(alert("t1", Category::Attack, Severity::High))));
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        let dogeza = HubEvent::Alert(Arc::new(alert("t1", Category::Dogeza, Severity::High)));
        hub.publish(dogeza.clone());
        assert_eq!(a.recv().await.expect("a"), dogeza);
        assert_eq!(b.recv().await.expect("b"), dogeza);
    }

    /// Ids never repeat within a process.
    #[test]
    fn ids_are_unique() {
        let ids = AlertIds::default();
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
    }
}
