//! `AlertService`: the supervisor side. `Subscribe` streams a tenant's events, filtered and
//! resumable; `Acknowledge` records what a supervisor did about an alert; `EntryStats` reports
//! false alarms per lexicon entry.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::alert::AlertFilter;
use crate::alert::ack::{AckError, AckRequest};
use crate::alert::bus::{Resume, SubscribeError, Subscription};
use crate::auth::{self, Role};
use crate::conversation::require_id;
use crate::error::ScreenError;
use crate::grpc::{
    acknowledgement_to_pb, category_from_pb, delivery_to_pb, heartbeat_to_pb, outcome_from_pb,
    severity_from_pb,
};
use crate::limits::SubscriberSlot;
use crate::pb;
use crate::pb::alert_service_server::AlertService;
use crate::server::Shared;
use crate::telemetry;

/// Events handed from a subscription's task to its gRPC stream (and, likewise, to a console's
/// server-sent event stream). The subscriber's real queue is
/// the bus's (`alert_buffer`), where overflowing is counted and reported; this one only has to
/// let a busy runtime move many events per wake-up: the subscription's task and the connection
/// that writes the stream each run once per round of the runtime's queue, so at most this many
/// events cross per round. With 8, a saturated server (1,000 streams in its run queue) left
/// alerts 0.6-2.4 s behind their verdicts; with 128 they keep up (README, Performance).
pub(crate) const EVENT_BUFFER: usize = 128;
/// The most values one list filter (queues, conversation ids) may hold: a supervisor's
/// floor, not a bulk export.
pub const MAX_FILTER_VALUES: usize = 100;

/// The `AlertService` implementation.
#[derive(Debug, Clone)]
pub struct Alerts {
    shared: Arc<Shared>,
}

impl Alerts {
    /// A service over the shared server state.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<pb::AlertEvent, Status>> + Send>>;

/// Checks a list filter: at most [`MAX_FILTER_VALUES`] values, each a non-empty id.
///
/// # Errors
/// [`ScreenError::InvalidArgument`] on `field`.
pub fn check_list(field: &'static str, values: &[String]) -> Result<(), ScreenError> {
    if values.len() > MAX_FILTER_VALUES {
        return Err(ScreenError::invalid(field, format!("more than {MAX_FILTER_VALUES} values")));
    }
    values.iter().try_for_each(|v| require_id(field, v, true))
}

/// Decodes and validates a subscription request.
fn filter_from_pb(request: pb::SubscribeRequest) -> Result<(AlertFilter, Resume), ScreenError> {
    require_id("tenant_id", &request.tenant_id, true)?;
    let min_severity = match request.min_severity {
        0 => None,
        value => Some(
            severity_from_pb(value)
                .ok_or_else(|| ScreenError::invalid("min_severity", "unknown severity"))?,
        ),
    };
    let categories = request
        .categories
        .iter()
        .map(|&c| {
            category_from_pb(c)
                .ok_or_else(|| ScreenError::invalid("categories", "unknown category"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    check_list("queues", &request.queues)?;
    check_list("conversation_ids", &request.conversation_ids)?;
    let resume = Resume::parse(&request.cursor).map_err(|e| ScreenError::invalid("cursor", e))?;
    let filter = AlertFilter {
        tenant_id: request.tenant_id,
        min_severity,
        categories,
        queues: request.queues,
        conversation_ids: request.conversation_ids,
    };
    Ok((filter, resume))
}

/// Opens a subscription on the hub, within the tenant's subscriber limit; the subscription
/// holds its slot while the returned [`SubscriberSlot`] lives.
///
/// # Errors
/// [`ScreenError::ResourceExhausted`] on `tenant_id` when the tenant has its maximum of
/// subscriptions; [`ScreenError::InvalidArgument`] on `cursor` when it is ahead of the
/// tenant's stream.
pub fn open_subscription(
    shared: &Shared,
    filter: AlertFilter,
    resume: Resume,
) -> Result<(Subscription, SubscriberSlot), ScreenError> {
    let slot = shared.subscribers.open(&filter.tenant_id)?;
    let subscription = shared.hub.subscribe(filter, resume).map_err(|e| match e {
        SubscribeError::CursorAhead => ScreenError::invalid("cursor", e.to_string()),
    })?;
    Ok((subscription, slot))
}

/// Records an acknowledgement through the hub, mapping an unknown alert to NOT_FOUND.
///
/// # Errors
/// Invalid fields (see [`AckRequest::validate`]) or an unknown alert.
pub fn acknowledge(
    shared: &Shared,
    request: AckRequest,
) -> Result<Arc<crate::alert::ack::Acknowledgement>, ScreenError> {
    request.validate()?;
    shared.hub.acknowledge(request).map_err(|e| match e {
        AckError::UnknownAlert => {
            ScreenError::NotFound("no such alert among the tenant's recent alerts")
        }
    })
}

#[tonic::async_trait]
impl AlertService for Alerts {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        auth::authorize(&request, Role::Supervisor, &request.get_ref().tenant_id)?;
        let (filter, resume) = filter_from_pb(request.into_inner())?;
        // Subscribe before returning, so every event published after the response headers
        // reach the client is delivered (or replayed, with a cursor).
        let (mut subscription, slot) = open_subscription(&self.shared, filter, resume)?;
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let token = self.shared.shutdown.clone();
        let heartbeat = self.shared.heartbeat_interval;
        self.shared.tasks.spawn(async move {
            let _open = telemetry::SubscriberGauge::open();
            let _slot = slot;
            loop {
                let event = tokio::select! {
                    next = tokio::time::timeout(heartbeat, subscription.next()) => match next {
                        Ok(Some(delivery)) => delivery_to_pb(&delivery),
                        Ok(None) => return, // the hub is gone: the server is stopping
                        Err(_) => heartbeat_to_pb(subscription.position()),
                    },
                    () = token.cancelled() => {
                        let _ = tx.try_send(Err(Status::from(ScreenError::Unavailable)));
                        return;
                    }
                    () = tx.closed() => return, // the supervisor disconnected
                };
                if let Some(pb::alert_event::Kind::Gap(gap)) = &event.kind {
                    tracing::warn!(
                        missed = gap.missed,
                        reason = gap.reason,
                        "alert subscriber missed events"
                    );
                    telemetry::alerts_dropped(gap.missed);
                }
                // A supervisor that stops reading blocks only this task; the bus skips it
                // ahead and the next delivery is a gap notice.
                tokio::select! {
                    sent = tx.send(Ok(event)) => if sent.is_err() { return },
                    () = token.cancelled() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn acknowledge(
        &self,
        request: Request<pb::AcknowledgeRequest>,
    ) -> Result<Response<pb::AcknowledgeResponse>, Status> {
        auth::authorize(&request, Role::Supervisor, &request.get_ref().tenant_id)?;
        let request = request.into_inner();
        let outcome = outcome_from_pb(request.outcome)
            .ok_or_else(|| ScreenError::invalid("outcome", "unknown outcome"))?;
        let recorded = acknowledge(
            &self.shared,
            AckRequest {
                tenant_id: request.tenant_id,
                alert_id: request.alert_id,
                acknowledged_by: request.acknowledged_by,
                outcome,
                note: request.note,
            },
        )?;
        Ok(Response::new(pb::AcknowledgeResponse {
            acknowledgement: Some(acknowledgement_to_pb(&recorded)),
        }))
    }

    async fn entry_stats(
        &self,
        request: Request<pb::EntryStatsRequest>,
    ) -> Result<Response<pb::EntryStatsResponse>, Status> {
        auth::authorize(&request, Role::Supervisor, &request.get_ref().tenant_id)?;
        let request = request.into_inner();
        require_id("tenant_id", &request.tenant_id, true)?;
        let entries = self
            .shared
            .hub
            .entry_stats(&request.tenant_id)
            .into_iter()
            .map(|s| pb::EntryStat {
                entry_id: s.entry_id,
                alerts: s.alerts,
                acknowledged: s.acknowledged,
                false_alarms: s.false_alarms,
            })
            .collect();
        Ok(Response::new(pb::EntryStatsResponse { entries }))
    }
}
