//! How a [`HubEvent`] is stored in a shared stream: the supervisor API's own `AlertEvent`
//! message, protobuf-encoded.
//!
//! Reusing the public message means one schema for clients and for nodes, and an entry read
//! with `redis-cli XRANGE` decodes with any protobuf tool. The policy texts it carries
//! (`policy_item`, `recommended_action`) are derived from category and severity, so they are
//! recomputed on decoding rather than trusted.

use std::sync::Arc;
use std::time::SystemTime;

use prost::Message;

use crate::alert::ack::Acknowledgement;
use crate::alert::{Alert, AlertStatus, HubEvent, Summary};
use crate::grpc::{category_from_pb, event_kind_to_pb, outcome_from_pb, severity_from_pb};
use crate::pb;
use crate::pb::alert_event::Kind;
use crate::pipeline::Evidence;

/// Why a stored entry could not be read back; the entry is skipped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Not a protobuf `AlertEvent`.
    #[error("entry is not an encoded AlertEvent")]
    Decode,
    /// A field the event needs is missing or out of range.
    #[error("entry lacks or misstates {0}")]
    Field(&'static str),
}

/// Encodes `event` as it is stored.
pub fn encode(event: &HubEvent) -> Vec<u8> {
    pb::AlertEvent { kind: Some(event_kind_to_pb(event)), cursor: String::new() }.encode_to_vec()
}

/// Decodes a stored event.
///
/// # Errors
/// Bytes that are not an `AlertEvent`, or one missing what the event needs.
pub fn decode(bytes: &[u8]) -> Result<HubEvent, WireError> {
    let message = pb::AlertEvent::decode(bytes).map_err(|_| WireError::Decode)?;
    match message.kind.ok_or(WireError::Field("kind"))? {
        Kind::Alert(a) => Ok(HubEvent::Alert(Arc::new(alert_from_pb(a)?))),
        Kind::Update(u) => {
            let alert = alert_from_pb(u.alert.ok_or(WireError::Field("update.alert"))?)?;
            Ok(HubEvent::Update(Arc::new(alert), u.seq))
        }
        Kind::Summary(s) => Ok(HubEvent::Summary(Arc::new(summary_from_pb(s)?))),
        Kind::Acknowledgement(ack) => {
            let alert = alert_from_pb(ack.alert.ok_or(WireError::Field("ack.alert"))?)?;
            Ok(HubEvent::Acknowledged(Arc::new(Acknowledgement {
                alert: Arc::new(alert),
                acknowledged_by: ack.acknowledged_by,
                acknowledged_at: time(ack.acknowledged_at)?,
                outcome: outcome_from_pb(ack.outcome).ok_or(WireError::Field("ack.outcome"))?,
                note: ack.note,
            })))
        }
        Kind::Heartbeat(_) | Kind::Gap(_) => Err(WireError::Field("kind")),
    }
}

fn time(t: Option<prost_types::Timestamp>) -> Result<SystemTime, WireError> {
    t.and_then(|t| SystemTime::try_from(t).ok()).ok_or(WireError::Field("timestamp"))
}

fn alert_from_pb(a: pb::Alert) -> Result<Alert, WireError> {
    let status = match pb::AlertStatus::try_from(a.status) {
        Ok(pb::AlertStatus::Provisional) => AlertStatus::Provisional,
        Ok(pb::AlertStatus::Retracted) => AlertStatus::Retracted,
        Ok(_) => AlertStatus::Confirmed,
        Err(_) => return Err(WireError::Field("alert.status")),
    };
    Ok(Alert {
        alert_id: a.alert_id,
        conversation_id: a.conversation_id,
        tenant_id: a.tenant_id,
        queue: a.queue,
        agent_id: a.agent_id,
        seq: a.seq,
        category: category_from_pb(a.category).ok_or(WireError::Field("alert.category"))?,
        severity: severity_from_pb(a.severity).ok_or(WireError::Field("alert.severity"))?,
        evidence: a
            .evidence
            .into_iter()
            .map(|e| Evidence {
                quote: e.quote,
                start: e.start as usize,
                end: e.end as usize,
                normalized: e.normalized,
                entry_id: e.entry_id,
                reason: e.reason,
                context: e.context,
                context_start: e.context_start as usize,
            })
            .collect(),
        created_at: time(a.created_at)?,
        status,
        previous_alert_id: Some(a.previous_alert_id).filter(|id| !id.is_empty()),
        risk_score: a.risk_score,
    })
}

fn summary_from_pb(s: pb::ConversationSummary) -> Result<Summary, WireError> {
    // The reasons are the server's own words; anything else is not an entry we wrote.
    let reason = ["end", "closed", "idle"]
        .into_iter()
        .find(|r| *r == s.reason)
        .ok_or(WireError::Field("summary.reason"))?;
    Ok(Summary {
        conversation_id: s.conversation_id,
        tenant_id: s.tenant_id,
        queue: s.queue,
        categories: s
            .categories
            .into_iter()
            .map(|c| category_from_pb(c).ok_or(WireError::Field("summary.categories")))
            .collect::<Result<_, _>>()?,
        peak_severity: severity_from_pb(s.peak_severity),
        alert_ids: s.alert_ids,
        duration_ms: s.duration_ms,
        segments: s.segments,
        risk_score: s.risk_score,
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::ack::AckOutcome;
    use crate::alert::tests_support::numbered;
    use crate::policy::{Category, Severity};

    /// Every event kind survives the round trip unchanged.
    #[test]
    fn round_trip() {
        let alert = numbered("x", &["attack.kill"]);
        let mut escalated = (*alert).clone();
        escalated.previous_alert_id = Some("w".into());
        escalated.status = AlertStatus::Retracted;
        let events = [
            HubEvent::Alert(Arc::clone(&alert)),
            HubEvent::Update(Arc::new(escalated), 9),
            HubEvent::Summary(Arc::new(Summary {
                conversation_id: "c".into(),
                tenant_id: "t1".into(),
                queue: "q".into(),
                categories: vec![Category::Attack],
                peak_severity: Some(Severity::High),
                alert_ids: vec!["x".into()],
                duration_ms: 5,
                segments: 2,
                risk_score: 0.5,
                reason: "idle",
            })),
            HubEvent::Acknowledged(Arc::new(Acknowledgement {
                alert,
                acknowledged_by: "sv".into(),
                acknowledged_at: SystemTime::UNIX_EPOCH,
                outcome: AckOutcome::FalseAlarm,
                note: "n".into(),
            })),
        ];
        for event in events {
            assert_eq!(decode(&encode(&event)).as_ref(), Ok(&event));
        }
        assert_eq!(decode(b"\xff\xff"), Err(WireError::Decode));
    }
}
