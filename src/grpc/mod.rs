//! The gRPC edge: thin tonic services that turn protobuf into domain types and back, validate
//! requests and map errors to statuses. No screening logic lives here.

pub mod admin;
pub mod alerts;
pub mod codec;
pub mod screening;

use std::time::SystemTime;

use prost_types::Timestamp;

use crate::alert::ack::{AckOutcome, Acknowledgement};
use crate::alert::bus::{Cursor, Delivery, GapReason};
use crate::alert::{Alert, AlertStatus, HubEvent, Summary};
use crate::conversation::Speaker;
use crate::error::ScreenError;
use crate::pb;
use crate::pipeline::Evidence;
use crate::policy::{Category, Severity};

/// Converts a wire category; `UNSPECIFIED` and unknown numbers are `None`.
pub fn category_from_pb(value: i32) -> Option<Category> {
    use pb::Category as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::Attack => Category::Attack,
        P::Intimidation => Category::Intimidation,
        P::Restraint => Category::Restraint,
        P::Dogeza => Category::Dogeza,
        P::Persistence => Category::Persistence,
        P::DiscriminationSexual => Category::DiscriminationSexual,
        P::PersonalAttack => Category::PersonalAttack,
        P::OnlineExposure => Category::OnlineExposure,
        P::ExcessiveDemand => Category::ExcessiveDemand,
        P::Other => Category::Other,
    })
}

/// Converts a category to the wire enum.
pub fn category_to_pb(category: Category) -> pb::Category {
    use pb::Category as P;
    match category {
        Category::Attack => P::Attack,
        Category::Intimidation => P::Intimidation,
        Category::Restraint => P::Restraint,
        Category::Dogeza => P::Dogeza,
        Category::Persistence => P::Persistence,
        Category::DiscriminationSexual => P::DiscriminationSexual,
        Category::PersonalAttack => P::PersonalAttack,
        Category::OnlineExposure => P::OnlineExposure,
        Category::ExcessiveDemand => P::ExcessiveDemand,
        Category::Other => P::Other,
    }
}

/// Converts a wire severity; `UNSPECIFIED` and unknown numbers are `None`.
pub fn severity_from_pb(value: i32) -> Option<Severity> {
    use pb::Severity as P;
    Some(match P::try_from(value).ok()? {
        P::Unspecified => return None,
        P::Low => Severity::Low,
        P::Medium => Severity::Medium,
        P::High => Severity::High,
        P::Critical => Severity::Critical,
    })
}

/// Converts a severity to the wire enum.
pub fn severity_to_pb(severity: Severity) -> pb::Severity {
    match severity {
        Severity::Low => pb::Severity::Low,
        Severity::Medium => pb::Severity::Medium,
        Severity::High => pb::Severity::High,
        Severity::Critical => pb::Severity::Critical,
    }
}

/// Decodes a speaker; `UNSPECIFIED` or an unknown number is an invalid argument.
///
/// # Errors
/// [`ScreenError::InvalidArgument`] on `field`.
pub fn speaker_from_pb(field: &'static str, value: i32) -> Result<Speaker, ScreenError> {
    match pb::Speaker::try_from(value) {
        Ok(pb::Speaker::Customer) => Ok(Speaker::Customer),
        Ok(pb::Speaker::Agent) => Ok(Speaker::Agent),
        _ => Err(ScreenError::invalid(field, "must be SPEAKER_CUSTOMER or SPEAKER_AGENT")),
    }
}

fn evidence_to_pb(e: &Evidence) -> pb::Evidence {
    pb::Evidence {
        quote: e.quote.clone(),
        start: e.start as u32,
        end: e.end as u32,
        normalized: e.normalized.clone(),
        entry_id: e.entry_id.clone(),
        reason: e.reason.clone(),
        context: e.context.clone(),
        context_start: e.context_start as u32,
    }
}

/// Converts an alert to the wire message, adding the policy's words for its category and
/// severity.
pub fn alert_to_pb(alert: &Alert) -> pb::Alert {
    pb::Alert {
        alert_id: alert.alert_id.clone(),
        conversation_id: alert.conversation_id.clone(),
        tenant_id: alert.tenant_id.clone(),
        seq: alert.seq,
        category: category_to_pb(alert.category).into(),
        severity: severity_to_pb(alert.severity).into(),
        evidence: alert.evidence.iter().map(evidence_to_pb).collect(),
        policy_item: alert.category.policy_item().to_owned(),
        recommended_action: alert.severity.recommended_action().to_owned(),
        created_at: Some(Timestamp::from(alert.created_at)),
        queue: alert.queue.clone(),
        agent_id: alert.agent_id.clone(),
        status: match alert.status {
            AlertStatus::Confirmed => pb::AlertStatus::Confirmed,
            AlertStatus::Provisional => pb::AlertStatus::Provisional,
            AlertStatus::Retracted => pb::AlertStatus::Retracted,
        }
        .into(),
        previous_alert_id: alert.previous_alert_id.clone().unwrap_or_default(),
        risk_score: alert.risk_score,
    }
}

/// Converts a conversation summary to the wire message.
pub fn summary_to_pb(summary: &Summary) -> pb::ConversationSummary {
    pb::ConversationSummary {
        conversation_id: summary.conversation_id.clone(),
        tenant_id: summary.tenant_id.clone(),
        queue: summary.queue.clone(),
        categories: summary.categories.iter().map(|&c| category_to_pb(c).into()).collect(),
        peak_severity: summary
            .peak_severity
            .map_or(pb::Severity::Unspecified, severity_to_pb)
            .into(),
        alert_ids: summary.alert_ids.clone(),
        duration_ms: summary.duration_ms,
        segments: summary.segments,
        risk_score: summary.risk_score,
        reason: summary.reason.to_owned(),
    }
}

/// Converts an acknowledgement outcome to the wire enum.
pub fn outcome_to_pb(outcome: AckOutcome) -> pb::AckOutcome {
    use pb::AckOutcome as P;
    match outcome {
        AckOutcome::Seen => P::Unspecified,
        AckOutcome::WarnedCustomer => P::WarnedCustomer,
        AckOutcome::TookOver => P::TookOver,
        AckOutcome::EndedCall => P::EndedCall,
        AckOutcome::FalseAlarm => P::FalseAlarm,
        AckOutcome::Escalated => P::Escalated,
        AckOutcome::NoAction => P::NoAction,
    }
}

/// Converts a wire outcome; `UNSPECIFIED` is "seen", an unknown number `None`.
pub fn outcome_from_pb(value: i32) -> Option<AckOutcome> {
    let wire = pb::AckOutcome::try_from(value).ok()?;
    AckOutcome::ALL.into_iter().find(|&o| outcome_to_pb(o) == wire)
}

/// Converts an acknowledgement to the wire message.
pub fn acknowledgement_to_pb(ack: &Acknowledgement) -> pb::Acknowledgement {
    pb::Acknowledgement {
        alert: Some(alert_to_pb(&ack.alert)),
        acknowledged_by: ack.acknowledged_by.clone(),
        acknowledged_at: Some(Timestamp::from(ack.acknowledged_at)),
        outcome: outcome_to_pb(ack.outcome).into(),
        note: ack.note.clone(),
    }
}

/// Converts an alert event to the supervisor stream's message kind (also how the Redis bus
/// stores it).
pub fn event_kind_to_pb(event: &HubEvent) -> pb::alert_event::Kind {
    use pb::alert_event::Kind;
    match event {
        HubEvent::Alert(a) => Kind::Alert(alert_to_pb(a)),
        HubEvent::Update(a, seq) => {
            Kind::Update(pb::AlertUpdate { alert: Some(alert_to_pb(a)), seq: *seq })
        }
        HubEvent::Summary(s) => Kind::Summary(summary_to_pb(s)),
        HubEvent::Acknowledged(ack) => Kind::Acknowledgement(acknowledgement_to_pb(ack)),
    }
}

/// Converts a subscription's delivery to the supervisor stream's message.
pub fn delivery_to_pb(delivery: &Delivery) -> pb::AlertEvent {
    use pb::alert_event::Kind;
    let (kind, cursor) = match delivery {
        Delivery::Event { cursor, event } => (event_kind_to_pb(event), cursor),
        Delivery::Gap { cursor, missed, reason } => {
            let reason = match reason {
                GapReason::HistoryExpired => pb::GapReason::HistoryExpired,
                GapReason::SubscriberLagged => pb::GapReason::SubscriberLagged,
                GapReason::CursorUnknown => pb::GapReason::CursorUnknown,
            };
            (Kind::Gap(pb::Gap { missed: *missed, reason: reason.into() }), cursor)
        }
    };
    pb::AlertEvent { kind: Some(kind), cursor: cursor.to_string() }
}

/// A heartbeat at the subscriber's position.
pub fn heartbeat_to_pb(position: Cursor) -> pb::AlertEvent {
    let heartbeat = pb::Heartbeat { sent_at: Some(Timestamp::from(SystemTime::now())) };
    pb::AlertEvent {
        kind: Some(pb::alert_event::Kind::Heartbeat(heartbeat)),
        cursor: position.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every domain category and severity survives the wire in both directions.
    #[test]
    fn enums_round_trip() {
        for c in Category::ALL {
            assert_eq!(category_from_pb(category_to_pb(c) as i32), Some(c));
        }
        for s in Severity::ALL {
            assert_eq!(severity_from_pb(severity_to_pb(s) as i32), Some(s));
        }
        assert_eq!(category_from_pb(0), None);
        assert_eq!(category_from_pb(99), None);
        assert!(speaker_from_pb("speaker", 0).is_err());
        for o in AckOutcome::ALL {
            assert_eq!(outcome_from_pb(outcome_to_pb(o) as i32), Some(o));
        }
        assert_eq!(outcome_from_pb(99), None);
    }
}
