//! Acknowledgements: which alerts a supervisor has dealt with, how, and what that says about
//! the lexicon entries behind them.
//!
//! The ledger remembers each tenant's most recent alerts (as many as its event history
//! holds), so an alert can be acknowledged while a supervisor could still be looking at it.
//! Per lexicon entry it counts alerts raised, alerts acknowledged and alerts whose latest
//! outcome is a false alarm; those counts outlive the alerts and are bounded by the number of
//! lexicon entries.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::alert::bus::HistorySizes;
use crate::alert::{Alert, HubEvent};
use crate::conversation::require_id;
use crate::error::ScreenError;

/// The longest note accepted with an acknowledgement, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;

/// What a supervisor did about an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckOutcome {
    /// Seen; no outcome recorded.
    Seen,
    /// The customer was warned.
    WarnedCustomer,
    /// The supervisor took over.
    TookOver,
    /// The conversation was ended.
    EndedCall,
    /// The alert was wrong.
    FalseAlarm,
    /// Handed to legal, security or police.
    Escalated,
    /// Real, but nothing needed doing.
    NoAction,
}

impl AckOutcome {
    /// Every outcome, in wire order.
    pub const ALL: [AckOutcome; 7] = [
        AckOutcome::Seen,
        AckOutcome::WarnedCustomer,
        AckOutcome::TookOver,
        AckOutcome::EndedCall,
        AckOutcome::FalseAlarm,
        AckOutcome::Escalated,
        AckOutcome::NoAction,
    ];

    /// The stable code used by the console's JSON (the proto name without its prefix).
    pub fn code(self) -> &'static str {
        match self {
            AckOutcome::Seen => "SEEN",
            AckOutcome::WarnedCustomer => "WARNED_CUSTOMER",
            AckOutcome::TookOver => "TOOK_OVER",
            AckOutcome::EndedCall => "ENDED_CALL",
            AckOutcome::FalseAlarm => "FALSE_ALARM",
            AckOutcome::Escalated => "ESCALATED",
            AckOutcome::NoAction => "NO_ACTION",
        }
    }

    /// The outcome with this code.
    pub fn from_code(code: &str) -> Option<AckOutcome> {
        AckOutcome::ALL.into_iter().find(|o| o.code() == code)
    }
}

/// A supervisor's acknowledgement, as asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckRequest {
    /// The alert's tenant.
    pub tenant_id: String,
    /// The alert.
    pub alert_id: String,
    /// Who acknowledges.
    pub acknowledged_by: String,
    /// What was done.
    pub outcome: AckOutcome,
    /// A note for the record.
    pub note: String,
}

impl AckRequest {
    /// Checks the fields: tenant, alert and acknowledger required (ids at most
    /// [`MAX_ID_BYTES`](crate::conversation::MAX_ID_BYTES)), note at most [`MAX_NOTE_BYTES`].
    ///
    /// # Errors
    /// [`ScreenError::InvalidArgument`] naming the first bad field as the proto names it.
    pub fn validate(&self) -> Result<(), ScreenError> {
        require_id("tenant_id", &self.tenant_id, true)?;
        require_id("alert_id", &self.alert_id, true)?;
        require_id("acknowledged_by", &self.acknowledged_by, true)?;
        if self.note.len() > MAX_NOTE_BYTES {
            return Err(ScreenError::invalid(
                "note",
                format!("longer than {MAX_NOTE_BYTES} bytes"),
            ));
        }
        Ok(())
    }
}

/// An acknowledgement as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct Acknowledgement {
    /// The alert as it stood when acknowledged.
    pub alert: Arc<Alert>,
    /// Who acknowledged.
    pub acknowledged_by: String,
    /// When it was recorded.
    pub acknowledged_at: SystemTime,
    /// What was done.
    pub outcome: AckOutcome,
    /// The note.
    pub note: String,
}

/// Feedback on one lexicon entry within one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntryStat {
    /// The entry id.
    pub entry_id: String,
    /// Alerts citing the entry.
    pub alerts: u64,
    /// Of those, acknowledged ones.
    pub acknowledged: u64,
    /// Of those, ones whose latest outcome is a false alarm.
    pub false_alarms: u64,
}

/// Why an acknowledgement was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AckError {
    /// The tenant has no such alert among its recent ones.
    #[error("no such alert among the tenant's recent alerts")]
    UnknownAlert,
}

#[derive(Debug)]
struct AlertRecord {
    alert: Arc<Alert>,
    outcome: Option<AckOutcome>,
}

#[derive(Debug, Default)]
struct TenantLedger {
    alerts: HashMap<String, AlertRecord>,
    /// Alert ids, oldest first, for eviction.
    order: VecDeque<String>,
    entries: HashMap<String, EntryStat>,
}

/// Distinct entry ids cited by an alert's evidence.
fn entry_ids(alert: &Alert) -> BTreeSet<&str> {
    alert.evidence.iter().map(|e| e.entry_id.as_str()).collect()
}

impl TenantLedger {
    fn entry(&mut self, entry_id: &str) -> &mut EntryStat {
        self.entries
            .entry(entry_id.to_owned())
            .or_insert_with(|| EntryStat { entry_id: entry_id.to_owned(), ..EntryStat::default() })
    }
}

/// Recent alerts per tenant, their acknowledgements, and per-entry feedback.
#[derive(Debug)]
pub struct AckLedger {
    sizes: HistorySizes,
    tenants: Mutex<HashMap<String, TenantLedger>>,
}

impl AckLedger {
    /// A ledger that remembers as many alerts per tenant as `sizes` gives its history.
    pub fn new(sizes: HistorySizes) -> Self {
        Self { sizes, tenants: Mutex::new(HashMap::new()) }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, TenantLedger>> {
        // Every mutation leaves the maps consistent, so a poisoned lock is still usable.
        self.tenants.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes note of an event as the bus carries it: a new alert is remembered and counted
    /// for its entries; an update replaces the remembered alert (keeping its
    /// acknowledgement); an acknowledgement records its outcome, the latest outcome of an
    /// alert being the one counted.
    ///
    /// With several nodes every node observes every event once, from the shared stream, so
    /// all ledgers agree whichever node a supervisor acknowledged on.
    pub fn observe(&self, event: &HubEvent) {
        let (alert, is_new) = match event {
            HubEvent::Alert(a) => (a, true),
            HubEvent::Update(a, _) => (a, false),
            HubEvent::Acknowledged(ack) => return self.record_outcome(ack),
            HubEvent::Summary(_) => return,
        };
        let capacity = self.sizes.for_tenant(&alert.tenant_id).max(1);
        let mut tenants = self.lock();
        let ledger = tenants.entry(alert.tenant_id.clone()).or_default();
        if let Some(record) = ledger.alerts.get_mut(&alert.alert_id) {
            record.alert = Arc::clone(alert);
            return;
        }
        if is_new {
            for id in entry_ids(alert) {
                ledger.entry(id).alerts += 1;
            }
        }
        if ledger.order.len() == capacity
            && let Some(oldest) = ledger.order.pop_front()
        {
            ledger.alerts.remove(&oldest);
        }
        ledger.order.push_back(alert.alert_id.clone());
        ledger.alerts.insert(
            alert.alert_id.clone(),
            AlertRecord { alert: Arc::clone(alert), outcome: None },
        );
    }

    /// Checks that the tenant has the alert among its recent ones and builds the
    /// acknowledgement; the counts change when the bus carries it back to
    /// [`AckLedger::observe`].
    ///
    /// # Errors
    /// [`AckError::UnknownAlert`] when the tenant has no such recent alert.
    pub fn acknowledge(&self, request: AckRequest) -> Result<Acknowledgement, AckError> {
        let tenants = self.lock();
        let ledger = tenants.get(&request.tenant_id).ok_or(AckError::UnknownAlert)?;
        let record = ledger.alerts.get(&request.alert_id).ok_or(AckError::UnknownAlert)?;
        Ok(Acknowledgement {
            alert: Arc::clone(&record.alert),
            acknowledged_by: request.acknowledged_by,
            acknowledged_at: SystemTime::now(),
            outcome: request.outcome,
            note: request.note,
        })
    }

    /// Counts an acknowledgement's outcome against the alert's entries. An alert no longer
    /// remembered (evicted meanwhile) changes nothing: its earlier outcome is unknown.
    fn record_outcome(&self, ack: &Acknowledgement) {
        let mut tenants = self.lock();
        let Some(ledger) = tenants.get_mut(&ack.alert.tenant_id) else { return };
        let Some(record) = ledger.alerts.get_mut(&ack.alert.alert_id) else { return };
        let previous = record.outcome.replace(ack.outcome);
        let alert = Arc::clone(&record.alert);
        let was_false = previous == Some(AckOutcome::FalseAlarm);
        let is_false = ack.outcome == AckOutcome::FalseAlarm;
        for id in entry_ids(&alert) {
            let stat = ledger.entry(id);
            if previous.is_none() {
                stat.acknowledged += 1;
            }
            match (was_false, is_false) {
                (false, true) => stat.false_alarms += 1,
                (true, false) => stat.false_alarms = stat.false_alarms.saturating_sub(1),
                _ => {}
            }
        }
    }

    /// The tenant's per-entry feedback, most false alarms first, then by entry id.
    pub fn entry_stats(&self, tenant_id: &str) -> Vec<EntryStat> {
        let tenants = self.lock();
        let mut stats: Vec<EntryStat> = tenants
            .get(tenant_id)
            .map(|ledger| ledger.entries.values().cloned().collect())
            .unwrap_or_default();
        stats.sort_by(|a, b| {
            b.false_alarms.cmp(&a.false_alarms).then_with(|| a.entry_id.cmp(&b.entry_id))
        });
        stats
    }
}
