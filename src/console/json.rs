//! The console's JSON: domain events turned into the objects `console.js` reads. Codes are the
//! policy's (`ATTACK`, `HIGH`), times are milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::Event;
use serde_json::{Value, json};

use crate::alert::ack::{Acknowledgement, EntryStat};
use crate::alert::bus::{Cursor, Delivery, GapReason};
use crate::alert::{Alert, AlertStatus, HubEvent, Summary};

fn millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// An alert with its evidence, policy item and recommended action.
pub fn alert(a: &Alert) -> Value {
    json!({
        "alert_id": a.alert_id,
        "conversation_id": a.conversation_id,
        "tenant_id": a.tenant_id,
        "queue": a.queue,
        "agent_id": a.agent_id,
        "seq": a.seq,
        "category": a.category.code(),
        "severity": a.severity.code(),
        "status": match a.status {
            AlertStatus::Confirmed => "CONFIRMED",
            AlertStatus::Provisional => "PROVISIONAL",
            AlertStatus::Retracted => "RETRACTED",
        },
        "policy_item": a.category.policy_item(),
        "recommended_action": a.severity.recommended_action(),
        "created_at": millis(a.created_at),
        "previous_alert_id": a.previous_alert_id,
        "risk_score": a.risk_score,
        "evidence": a.evidence.iter().map(|e| json!({
            "quote": e.quote,
            "start": e.start,
            "end": e.end,
            "normalized": e.normalized,
            "entry_id": e.entry_id,
            "reason": e.reason,
            "context": e.context,
            "context_start": e.context_start,
        })).collect::<Vec<_>>(),
    })
}

fn summary(s: &Summary) -> Value {
    json!({
        "conversation_id": s.conversation_id,
        "tenant_id": s.tenant_id,
        "queue": s.queue,
        "categories": s.categories.iter().map(|c| c.code()).collect::<Vec<_>>(),
        "peak_severity": s.peak_severity.map(|p| p.code()),
        "alert_ids": s.alert_ids,
        "duration_ms": s.duration_ms,
        "segments": s.segments,
        "risk_score": s.risk_score,
        "reason": s.reason,
    })
}

/// An acknowledgement with the alert as it stands.
pub fn acknowledgement(ack: &Acknowledgement) -> Value {
    json!({
        "alert": alert(&ack.alert),
        "acknowledged_by": ack.acknowledged_by,
        "acknowledged_at": millis(ack.acknowledged_at),
        "outcome": ack.outcome.code(),
        "note": ack.note,
    })
}

/// One lexicon entry's feedback.
pub fn entry_stat(s: &EntryStat) -> Value {
    json!({
        "entry_id": s.entry_id,
        "alerts": s.alerts,
        "acknowledged": s.acknowledged,
        "false_alarms": s.false_alarms,
    })
}

fn sse(name: &'static str, cursor: Cursor, data: &Value) -> Event {
    Event::default().event(name).id(cursor.to_string()).data(data.to_string())
}

/// A delivery as a server-sent event named after its kind, with the cursor as its `id:`.
pub fn delivery_event(delivery: &Delivery) -> Event {
    match delivery {
        Delivery::Event { cursor, event } => match event {
            HubEvent::Alert(a) => sse("alert", *cursor, &alert(a)),
            HubEvent::Update(a, seq) => {
                sse("update", *cursor, &json!({"alert": alert(a), "seq": seq}))
            }
            HubEvent::Summary(s) => sse("summary", *cursor, &summary(s)),
            HubEvent::Acknowledged(ack) => sse("acknowledgement", *cursor, &acknowledgement(ack)),
        },
        Delivery::Gap { cursor, missed, reason } => {
            let reason = match reason {
                GapReason::HistoryExpired => "HISTORY_EXPIRED",
                GapReason::SubscriberLagged => "SUBSCRIBER_LAGGED",
                GapReason::CursorUnknown => "CURSOR_UNKNOWN",
            };
            sse("gap", *cursor, &json!({"missed": missed, "reason": reason}))
        }
    }
}

/// A heartbeat at the subscriber's position.
pub fn heartbeat_event(position: Cursor) -> Event {
    sse("heartbeat", position, &json!({"sent_at": millis(SystemTime::now())}))
}
