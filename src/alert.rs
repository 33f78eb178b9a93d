//! Alerts and their way to supervisors.
//!
//! Screening publishes every event once into the [`AlertHub`]. The hub hands it to the
//! [`bus`] (one ordered stream per tenant with a bounded history, so a supervisor who
//! reconnects with a cursor resumes with no gap and no duplicate) and to the [`ack`] ledger
//! (recent alerts, their acknowledgements, and false alarms per lexicon entry). Publishing
//! never waits for a subscriber: ingest must not slow down because a supervisor's browser is
//! slow; a subscriber that falls more than its queue behind is told how many events it
//! skipped instead of holding memory for it (the same trade as mini-redis's `subscribe`).

pub mod ack;
pub mod bus;
pub mod redis_bus;
pub mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

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
    /// A supervisor acknowledged an alert.
    Acknowledged(Arc<ack::Acknowledgement>),
}

impl HubEvent {
    /// The tenant the event belongs to.
    pub fn tenant_id(&self) -> &str {
        match self {
            HubEvent::Alert(a) | HubEvent::Update(a, _) => &a.tenant_id,
            HubEvent::Summary(s) => &s.tenant_id,
            HubEvent::Acknowledged(ack) => &ack.alert.tenant_id,
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

/// Where screening's events go: the per-tenant streams and the acknowledgement ledger.
#[derive(Debug)]
pub struct AlertHub {
    bus: Box<dyn bus::AlertBus>,
    ledger: Arc<ack::AckLedger>,
    evidence: Option<crate::evidence::EvidenceLog>,
}

impl AlertHub {
    /// A one-node hub whose subscribers may fall `queue` events behind before they skip, and
    /// whose tenants keep `history` events (and as many alerts for acknowledgement).
    pub fn new(queue: usize, history: bus::HistorySizes) -> Self {
        let ledger = Arc::new(ack::AckLedger::new(history.clone()));
        Self {
            bus: Box::new(bus::LocalBus::new(queue, history, Arc::clone(&ledger))),
            ledger,
            evidence: None,
        }
    }

    /// A hub over `bus`, which must feed every event it carries to `ledger` once.
    pub fn with_bus(bus: Box<dyn bus::AlertBus>, ledger: Arc<ack::AckLedger>) -> Self {
        Self { bus, ledger, evidence: None }
    }

    /// The same hub, also appending the alerts and acknowledgements published on this node
    /// to the evidence log (each node logs what it raised or was told, once).
    pub fn with_evidence_log(self, log: crate::evidence::EvidenceLog) -> Self {
        Self { evidence: Some(log), ..self }
    }

    /// Publishes an event to its tenant's stream; never waits. Returns its cursor when the
    /// bus numbers it at once (one node).
    pub fn publish(&self, event: HubEvent) -> Option<bus::Cursor> {
        if let Some(log) = &self.evidence {
            log.record(&event);
        }
        self.bus.publish(event)
    }

    /// Opens a filtered subscription to the filter's tenant, from `resume`.
    ///
    /// # Errors
    /// A cursor ahead of the tenant's stream.
    pub fn subscribe(
        &self,
        filter: AlertFilter,
        resume: bus::Resume,
    ) -> Result<bus::Subscription, bus::SubscribeError> {
        self.bus.subscribe(filter, resume)
    }

    /// Records an acknowledgement and streams it to the tenant's subscribers; the ledger
    /// counts it as the bus carries it.
    ///
    /// # Errors
    /// An alert the tenant does not have among its recent ones.
    pub fn acknowledge(
        &self,
        request: ack::AckRequest,
    ) -> Result<Arc<ack::Acknowledgement>, ack::AckError> {
        let acknowledgement = Arc::new(self.ledger.acknowledge(request)?);
        let event = HubEvent::Acknowledged(Arc::clone(&acknowledgement));
        if let Some(log) = &self.evidence {
            log.record(&event);
        }
        self.bus.publish(event);
        Ok(acknowledgement)
    }

    /// The tenant's feedback per lexicon entry, most false alarms first.
    pub fn entry_stats(&self, tenant_id: &str) -> Vec<ack::EntryStat> {
        self.ledger.entry_stats(tenant_id)
    }
}

/// What a supervisor asked to see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// Only this tenant's events (required).
    pub tenant_id: String,
    /// Only at or above this severity.
    pub min_severity: Option<Severity>,
    /// Only these categories; empty means all.
    pub categories: Vec<Category>,
    /// Only conversations on these queues; empty means all.
    pub queues: Vec<String>,
    /// Only these conversations; empty means all.
    pub conversation_ids: Vec<String>,
}

impl AlertFilter {
    /// Whether the conversation (by queue and id) is one the filter lets through.
    fn accepts_conversation(&self, queue: &str, conversation_id: &str) -> bool {
        (self.queues.is_empty() || self.queues.iter().any(|q| q == queue))
            && (self.conversation_ids.is_empty()
                || self.conversation_ids.iter().any(|c| c == conversation_id))
    }

    /// Whether `alert` passes the filter.
    pub fn accepts(&self, alert: &Alert) -> bool {
        alert.tenant_id == self.tenant_id
            && self.min_severity.is_none_or(|min| alert.severity >= min)
            && (self.categories.is_empty() || self.categories.contains(&alert.category))
            && self.accepts_conversation(&alert.queue, &alert.conversation_id)
    }

    /// Whether `event` passes the filter: alerts, updates and acknowledgements by their
    /// alert; summaries by tenant, queue and conversation (they have no single severity).
    pub fn accepts_event(&self, event: &HubEvent) -> bool {
        match event {
            HubEvent::Alert(a) | HubEvent::Update(a, _) => self.accepts(a),
            HubEvent::Acknowledged(ack) => self.accepts(&ack.alert),
            HubEvent::Summary(s) => {
                s.tenant_id == self.tenant_id
                    && self.accepts_conversation(&s.queue, &s.conversation_id)
            }
        }
    }
}

/// Test helpers shared by the alert modules' unit tests.
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// An alert of tenant t1, category and severity as given.
    pub(crate) fn alert(tenant: &str, category: Category, severity: Severity) -> Alert {
        Alert {
            alert_id: "a".into(),
            conversation_id: "c".into(),
            tenant_id: tenant.into(),
            queue: "billing".into(),
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

    /// An alert of tenant t1 with this id, citing these lexicon entries.
    pub(crate) fn numbered(id: &str, entries: &[&str]) -> Arc<Alert> {
        let mut a = alert("t1", Category::Attack, Severity::High);
        a.alert_id = id.into();
        a.evidence = entries
            .iter()
            .map(|e| Evidence {
                quote: "q".into(),
                start: 0,
                end: 1,
                normalized: "q".into(),
                entry_id: (*e).into(),
                reason: String::new(),
                context: "q".into(),
                context_start: 0,
            })
            .collect();
        Arc::new(a)
    }
}

#[cfg(test)]
mod tests {
    use super::ack::{AckError, AckOutcome, AckRequest};
    use super::bus::{Cursor, Delivery, GapReason, HistorySizes, Resume, SubscribeError};
    use super::tests_support::{alert, numbered};
    use super::*;

    /// Publishes alert `id` on a one-node hub, which numbers it at once.
    fn published(hub: &AlertHub, id: &str) -> Cursor {
        hub.publish(HubEvent::Alert(numbered(id, &[]))).expect("a one-node bus numbers at once")
    }

    fn hub(queue: usize, history: usize) -> AlertHub {
        AlertHub::new(queue, HistorySizes { default: history, ..HistorySizes::default() })
    }

    fn tenant(id: &str) -> AlertFilter {
        AlertFilter { tenant_id: id.into(), ..AlertFilter::default() }
    }

    /// The alert id of a delivered event, or a description of what came instead.
    fn alert_id(delivery: Option<Delivery>) -> String {
        match delivery {
            Some(Delivery::Event { event: HubEvent::Alert(a), .. }) => a.alert_id.clone(),
            other => format!("not an alert: {other:?}"),
        }
    }

    /// Filters apply tenant, minimum severity, categories, queues and conversations together.
    #[test]
    fn filter_rows() {
        let f = AlertFilter {
            tenant_id: "t1".into(),
            min_severity: Some(Severity::High),
            categories: vec![Category::Attack],
            queues: vec!["billing".into()],
            conversation_ids: vec!["c".into(), "d".into()],
        };
        let on_queue =
            |q: &str| Alert { queue: q.into(), ..alert("t1", Category::Attack, Severity::High) };
        let in_conv = |c: &str| Alert {
            conversation_id: c.into(),
            ..alert("t1", Category::Attack, Severity::High)
        };
        for (a, want) in [
            (alert("t1", Category::Attack, Severity::High), true),
            (alert("t1", Category::Attack, Severity::Critical), true),
            (alert("t2", Category::Attack, Severity::Critical), false),
            (alert("t1", Category::Attack, Severity::Medium), false),
            (alert("t1", Category::Dogeza, Severity::High), false),
            (on_queue("sales"), false),
            (in_conv("d"), true),
            (in_conv("e"), false),
        ] {
            assert_eq!(f.accepts(&a), want, "help: {a:?}");
        }
    }

    /// Publishing without subscribers is fine; a live subscriber sees only what follows, with
    /// increasing cursors.
    #[tokio::test]
    async fn hub_fans_out() {
        let hub = hub(8, 16);
        hub.publish(HubEvent::Alert(numbered("before", &[])));
        let mut a = hub.subscribe(tenant("t1"), Resume::Live).expect("a");
        let mut b = hub.subscribe(tenant("t1"), Resume::Live).expect("b");
        let first = published(&hub, "x");
        let second = published(&hub, "y");
        assert!(second.seq() > first.seq());
        assert_eq!(alert_id(a.next().await), "x");
        assert_eq!(alert_id(a.next().await), "y");
        assert_eq!(alert_id(b.next().await), "x");
        assert_eq!(a.position(), second, "help: the position is the last event passed");
    }

    /// A cursor resumes right after itself: history first, then live, nothing twice.
    #[tokio::test]
    async fn resume_replays_then_goes_live() {
        let hub = hub(8, 16);
        let other = tenant("t2");
        let mut other_tenant = hub.subscribe(other, Resume::Live).expect("t2");
        let c1 = published(&hub, "1");
        hub.publish(HubEvent::Alert(numbered("2", &[])));
        hub.publish(HubEvent::Alert(numbered("3", &[])));
        let mut s = hub
            .subscribe(tenant("t1"), Resume::parse(&c1.to_string()).expect("cursor"))
            .expect("resume");
        hub.publish(HubEvent::Alert(numbered("4", &[])));
        let got: Vec<String> =
            [s.next().await, s.next().await, s.next().await].into_iter().map(alert_id).collect();
        assert_eq!(got, ["2", "3", "4"]);
        let mut oldest = hub.subscribe(tenant("t1"), Resume::Oldest).expect("oldest");
        assert_eq!(alert_id(oldest.next().await), "1");
        // Tenants have streams of their own: t2 saw nothing.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(20), other_tenant.next())
                .await
                .is_err()
        );
    }

    /// A cursor older than the history gets a gap notice with the exact count, then the
    /// whole history.
    #[tokio::test]
    async fn expired_cursor_reports_lost_events() {
        let hub = hub(8, 3);
        let c1 = published(&hub, "1");
        for id in ["2", "3", "4", "5", "6"] {
            hub.publish(HubEvent::Alert(numbered(id, &[])));
        }
        // History holds 4, 5, 6; after 1, events 2 and 3 are gone.
        let mut s = hub.subscribe(tenant("t1"), Resume::After(c1)).expect("resume");
        match s.next().await {
            Some(Delivery::Gap { missed, reason, .. }) => {
                assert_eq!((missed, reason), (2, GapReason::HistoryExpired));
            }
            other => panic!("expected a gap, got {other:?}"),
        }
        assert_eq!(alert_id(s.next().await), "4");
    }

    /// Cursors from the future or another instance are told apart from good ones.
    #[tokio::test]
    async fn bad_cursors() {
        let hub = hub(8, 3);
        let issued = published(&hub, "1").to_string();
        let (instance, _) = issued.split_once('-').expect("instance-seq");
        let ahead = Resume::parse(&format!("{instance}-99")).expect("well-formed");
        assert_eq!(hub.subscribe(tenant("t1"), ahead).err(), Some(SubscribeError::CursorAhead));
        assert!(Resume::parse("soon").is_err());
        assert!(Resume::parse("zz-1").is_err());
        let mut stranger = hub
            .subscribe(tenant("t1"), Resume::parse("1-1").expect("well-formed"))
            .expect("another instance's cursor is accepted");
        assert!(matches!(
            stranger.next().await,
            Some(Delivery::Gap { reason: GapReason::CursorUnknown, missed: 0, .. })
        ));
        assert_eq!(alert_id(stranger.next().await), "1", "help: then the whole history");
    }

    /// A subscriber that stops reading is skipped ahead with a count, and publishing never
    /// waited for it.
    #[tokio::test]
    async fn slow_subscriber_gets_a_lag_notice() {
        let hub = hub(4, 100);
        let mut slow = hub.subscribe(tenant("t1"), Resume::Live).expect("slow");
        for i in 0..10 {
            hub.publish(HubEvent::Alert(numbered(&i.to_string(), &[])));
        }
        match slow.next().await {
            Some(Delivery::Gap { missed, reason, .. }) => {
                assert_eq!((missed, reason), (6, GapReason::SubscriberLagged));
            }
            other => panic!("expected a lag notice, got {other:?}"),
        }
        assert_eq!(alert_id(slow.next().await), "6");
    }

    /// Acknowledgements are recorded, streamed, and false alarms counted per entry by the
    /// latest outcome; unknown or foreign alerts are refused.
    #[tokio::test]
    async fn acknowledgements_count_false_alarms() {
        let hub = hub(8, 16);
        hub.publish(HubEvent::Alert(numbered("x", &["attack.kill", "attack.die"])));
        hub.publish(HubEvent::Alert(numbered("y", &["attack.kill"])));
        let mut s = hub.subscribe(tenant("t1"), Resume::Live).expect("live");
        let ack = |id: &str, tenant: &str, outcome| AckRequest {
            tenant_id: tenant.into(),
            alert_id: id.into(),
            acknowledged_by: "sv-1".into(),
            outcome,
            note: String::new(),
        };
        hub.acknowledge(ack("x", "t1", AckOutcome::FalseAlarm)).expect("x");
        match s.next().await {
            Some(Delivery::Event { event: HubEvent::Acknowledged(a), .. }) => {
                assert_eq!((a.alert.alert_id.as_str(), a.outcome), ("x", AckOutcome::FalseAlarm));
            }
            other => panic!("expected the acknowledgement, got {other:?}"),
        }
        hub.acknowledge(ack("y", "t1", AckOutcome::FalseAlarm)).expect("y");
        hub.acknowledge(ack("y", "t1", AckOutcome::WarnedCustomer)).expect("y again");
        let stats = hub.entry_stats("t1");
        let row = |id: &str| {
            let s = stats.iter().find(|s| s.entry_id == id).expect("entry listed");
            (s.alerts, s.acknowledged, s.false_alarms)
        };
        assert_eq!(row("attack.kill"), (2, 2, 1), "help: y's latest outcome is not a false alarm");
        assert_eq!(row("attack.die"), (1, 1, 1));
        assert_eq!(
            hub.acknowledge(ack("nope", "t1", AckOutcome::Seen)).err(),
            Some(AckError::UnknownAlert)
        );
        assert_eq!(
            hub.acknowledge(ack("x", "t2", AckOutcome::Seen)).err(),
            Some(AckError::UnknownAlert)
        );
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
