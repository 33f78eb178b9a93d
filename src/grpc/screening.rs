//! `ScreeningService`: the producer side. `Screen` runs one conversation per stream; `ScreenText`
//! screens a lone text.

use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::alert::{Alert, AlertStatus, HubEvent};
use crate::auth::{self, Principal, Role};
use crate::conversation::{
    Conversation, ConversationInfo, SegmentIn, SegmentOutcome, Services, Speaker, check_text,
};
use crate::error::ScreenError;
use crate::grpc::{alert_to_pb, speaker_from_pb, summary_to_pb};
use crate::pb;
use crate::pb::screening_service_server::ScreeningService;
use crate::server::Shared;
use crate::telemetry::{self, ConversationGauge, SegmentTimer};

/// Verdicts buffered per stream before the handler waits for the client to read. Small on
/// purpose: a client that stops reading should slow only its own stream.
const VERDICT_BUFFER: usize = 32;

/// What a stream's task sends its client. Boxed because tokio's channel allocates its first
/// block of 32 slots when it is created: 32 unboxed responses (a `Status` and an alert inline)
/// would cost every idle stream several KiB; 32 boxes cost 256 bytes.
type VerdictSender = mpsc::Sender<Box<Result<pb::ScreenResponse, Status>>>;

/// Segments at least this long (UTF-8 bytes) are screened with the worker thread handed off
/// (`block_in_place`): a long utterance takes a few hundred microseconds to screen, past the
/// ~100 µs a task should run between awaits, and the other streams on that worker would wait.
/// Shorter ones (most chat lines and ASR finals) run inline, where the hand-off would cost
/// more than it saves.
const OFF_WORKER_BYTES: usize = 256;

/// The `ScreeningService` implementation.
#[derive(Debug, Clone)]
pub struct Screening {
    shared: Arc<Shared>,
}

impl Screening {
    /// A service over the shared server state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ScreenResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ScreeningService for Screening {
    type ScreenStream = ResponseStream;

    async fn screen(
        &self,
        request: Request<Streaming<pb::ScreenRequest>>,
    ) -> Result<Response<Self::ScreenStream>, Status> {
        // The tenant arrives with ConversationStart; it is checked against this caller there.
        let caller = auth::authorize(&request, Role::Producer, "")?;
        let inbound = request.into_inner();
        let (tx, rx): (VerdictSender, _) = mpsc::channel(VERDICT_BUFFER);
        let shared = Arc::clone(&self.shared);
        let token = shared.shutdown.clone();
        self.shared.tasks.spawn(async move {
            let outcome = tokio::select! {
                outcome = run_conversation(&shared, &caller, inbound, &tx) => outcome,
                () = token.cancelled() => Err(Status::from(ScreenError::Unavailable)),
            };
            if let Err(status) = outcome {
                // A failed send means the client has gone; nothing more to tell it.
                let _ = tx.send(Box::new(Err(status))).await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(|response| *response))))
    }

    async fn screen_text(
        &self,
        request: Request<pb::ScreenTextRequest>,
    ) -> Result<Response<pb::ScreenTextResponse>, Status> {
        auth::authorize(&request, Role::Producer, &request.get_ref().tenant_id)?;
        let request = request.into_inner();
        crate::conversation::require_id("tenant_id", &request.tenant_id, true)?;
        let speaker = speaker_from_pb("speaker", request.speaker)?;
        check_text("text", &request.text)?;
        let _timer = SegmentTimer::start(speaker, "text");
        if speaker == Speaker::Agent {
            return Ok(Response::new(pb::ScreenTextResponse { alerts: Vec::new() }));
        }
        let detections = self
            .shared
            .rules
            .current()
            .pipelines
            .for_tenant(&request.tenant_id)
            .screen(&request.text)?;
        let created_at = SystemTime::now();
        let alerts = detections
            .into_iter()
            .map(|d| {
                let alert = Alert {
                    alert_id: self.shared.alert_ids.next_id(),
                    conversation_id: String::new(),
                    tenant_id: request.tenant_id.clone(),
                    queue: String::new(),
                    agent_id: String::new(),
                    seq: 0,
                    category: d.category,
                    severity: d.severity,
                    evidence: d.evidence,
                    created_at,
                    status: AlertStatus::Confirmed,
                    previous_alert_id: None,
                    risk_score: 0.0,
                };
                telemetry::alert_raised(&alert);
                alert_to_pb(&alert)
            })
            .collect();
        Ok(Response::new(pb::ScreenTextResponse { alerts }))
    }
}

/// Reads one conversation to its end, sending a verdict per segment and a summary at the end.
async fn run_conversation(
    shared: &Shared,
    caller: &Principal,
    mut inbound: Streaming<pb::ScreenRequest>,
    tx: &VerdictSender,
) -> Result<(), Status> {
    use pb::screen_request::Kind;

    // `_admitted` holds the conversation's slot until this function returns.
    let (mut conversation, _admitted) = match inbound.next().await {
        None => return Ok(()),
        Some(message) => match message?.kind {
            Some(Kind::Start(start)) => {
                let started_at = match start.started_at {
                    None => SystemTime::now(),
                    Some(t) => SystemTime::try_from(t).map_err(|_| {
                        ScreenError::invalid("start.started_at", "is not a valid timestamp")
                    })?,
                };
                let info = ConversationInfo {
                    conversation_id: start.conversation_id,
                    tenant_id: start.tenant_id,
                    customer_id: start.customer_id,
                    queue: start.queue,
                    agent_id: start.agent_id,
                    started_at,
                };
                info.validate()?;
                caller.check(Role::Producer, &info.tenant_id)?;
                let admitted = shared.live.open(&info.tenant_id, &info.conversation_id)?;
                let policy = shared.rules.current().policy.for_tenant(&info.tenant_id).clone();
                // With Redis: what other nodes know of the customer, and this conversation's
                // snapshot if it was started on another node (at most one Redis timeout).
                let snapshot = shared.callers.prepare(&info, policy.repeat_window).await;
                let mut conversation = Conversation::open(info, policy, shared.callers.as_ref());
                if let Some(snapshot) = snapshot
                    && conversation.restore(snapshot)
                {
                    tracing::debug!("conversation continues from another node's snapshot");
                }
                (conversation, admitted)
            }
            Some(_) => {
                return Err(ScreenError::FailedPrecondition(
                    "the first message of a Screen stream must be ConversationStart".into(),
                )
                .into());
            }
            None => return Err(ScreenError::invalid("kind", "is required").into()),
        },
    };
    let open = ConversationGauge::open();
    // The span names the conversation, its tenant and queue, but nothing a person could be
    // identified by: no customer or agent id, no text.
    let info = conversation.info();
    let span = tracing::info_span!(
        "conversation",
        conversation_id = %info.conversation_id,
        tenant_id = %info.tenant_id,
        queue = %info.queue,
    );
    async move {
        tracing::debug!("conversation started");
        let idle_timeout = conversation.policy().idle_timeout;
        let mut rate = shared.live.segment_rate();
        let reason = loop {
            let message = match tokio::time::timeout(idle_timeout, inbound.next()).await {
                Err(_) => break "idle",
                Ok(None) => break "closed",
                Ok(Some(message)) => message?,
            };
            match message.kind {
                Some(Kind::Segment(segment)) => {
                    rate.admit()?;
                    let speaker = speaker_from_pb("segment.speaker", segment.speaker)?;
                    let kind = if segment.is_final { "final" } else { "interim" };
                    let _timer = SegmentTimer::start(speaker, kind);
                    let segment = SegmentIn {
                        seq: segment.seq,
                        speaker,
                        text: segment.text,
                        is_final: segment.is_final,
                        start_ms: segment.start_ms,
                        end_ms: segment.end_ms,
                    };
                    // The rules are loaded once per segment, so a reload takes effect at the
                    // next segment of every open conversation (crate::reload).
                    let rules = shared.rules.current();
                    let services = Services {
                        pipeline: rules.pipelines.for_tenant(&conversation.info().tenant_id),
                        ids: &shared.alert_ids,
                        callers: shared.callers.as_ref(),
                    };
                    let outcome = if segment.text.len() >= OFF_WORKER_BYTES {
                        off_worker(|| conversation.screen(services, &segment))?
                    } else {
                        conversation.screen(services, &segment)?
                    };
                    drop(rules);
                    if !send_outcome(shared, tx, segment.seq, outcome).await {
                        return Ok(()); // the client left
                    }
                }
                Some(Kind::End(_)) => break "end",
                Some(Kind::Start(_)) => {
                    return Err(ScreenError::FailedPrecondition(
                        "ConversationStart may be sent only once per stream".into(),
                    )
                    .into());
                }
                None => return Err(ScreenError::invalid("kind", "is required").into()),
            }
        };
        let (summary, retracted) = conversation.finish(reason);
        if reason == "end" {
            // Ended for good; a stream that merely closed may continue on another node.
            let info = conversation.info();
            shared.callers.drop_snapshot(&info.tenant_id, &info.conversation_id);
        }
        let last_seq = summary.segments;
        for alert in retracted {
            telemetry::alert_raised(&alert);
            shared.hub.publish(HubEvent::Update(Arc::clone(&alert), last_seq));
            let update = pb::AlertUpdate { alert: Some(alert_to_pb(&alert)), seq: last_seq };
            let _ =
                tx.send(Box::new(Ok(response(pb::screen_response::Kind::Update(update))))).await;
        }
        let summary = Arc::new(summary);
        shared.hub.publish(HubEvent::Summary(Arc::clone(&summary)));
        let _ = tx
            .send(Box::new(Ok(response(pb::screen_response::Kind::Summary(summary_to_pb(
                &summary,
            ))))))
            .await;
        open.close(reason);
        tracing::debug!(reason, "conversation ended");
        Ok(())
    }
    .instrument(span)
    .await
}

/// Runs `work` with this worker thread's other tasks handed to another thread first, so they
/// are not held up; inline on a current-thread runtime (in-process tests), which cannot.
fn off_worker<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(work),
        _ => work(),
    }
}

fn response(kind: pb::screen_response::Kind) -> pb::ScreenResponse {
    pb::ScreenResponse { kind: Some(kind) }
}

/// Publishes a segment's events to supervisors and sends its verdict (and any updates) to the
/// producer; false when the producer has gone.
async fn send_outcome(
    shared: &Shared,
    tx: &VerdictSender,
    seq: u64,
    outcome: SegmentOutcome,
) -> bool {
    for alert in &outcome.updates {
        telemetry::alert_raised(alert);
        shared.hub.publish(HubEvent::Update(Arc::clone(alert), seq));
    }
    let updated: Vec<&str> = outcome.updates.iter().map(|a| a.alert_id.as_str()).collect();
    for alert in outcome.alerts.iter().chain(&outcome.provisional) {
        // A confirmed provisional alert reaches supervisors as its update, not a second alert.
        if !updated.contains(&alert.alert_id.as_str()) {
            telemetry::alert_raised(alert);
            shared.hub.publish(HubEvent::Alert(Arc::clone(alert)));
        }
    }
    let verdict = pb::SegmentVerdict {
        seq,
        alerts: outcome.alerts.iter().map(|a| alert_to_pb(a)).collect(),
        provisional_alerts: outcome.provisional.iter().map(|a| alert_to_pb(a)).collect(),
    };
    if tx.send(Box::new(Ok(response(pb::screen_response::Kind::Verdict(verdict))))).await.is_err() {
        return false;
    }
    for alert in outcome.updates {
        let update = pb::AlertUpdate { alert: Some(alert_to_pb(&alert)), seq };
        if tx.send(Box::new(Ok(response(pb::screen_response::Kind::Update(update))))).await.is_err()
        {
            return false;
        }
    }
    true
}
