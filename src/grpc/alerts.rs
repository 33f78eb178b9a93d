//! `AlertService`: the supervisor side. `Subscribe` streams a tenant's alerts, filtered.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::alert::AlertFilter;
use crate::conversation::require_id;
use crate::error::ScreenError;
use crate::grpc::{category_from_pb, event_to_pb, severity_from_pb};
use crate::pb;
use crate::pb::alert_service_server::AlertService;
use crate::server::Shared;
use crate::telemetry;

/// Events buffered per subscriber between the hub and the client's socket.
const EVENT_BUFFER: usize = 64;

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

/// Decodes and validates a subscription request.
fn filter_from_pb(request: pb::SubscribeRequest) -> Result<AlertFilter, ScreenError> {
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
    Ok(AlertFilter { tenant_id: request.tenant_id, min_severity, categories })
}

#[tonic::async_trait]
impl AlertService for Alerts {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let filter = filter_from_pb(request.into_inner())?;
        // Subscribe before returning, so every alert published after the response headers
        // reach the client is delivered.
        let mut alerts = self.shared.hub.subscribe();
        let (tx, rx) = mpsc::channel(EVENT_BUFFER);
        let token = self.shared.shutdown.clone();
        self.shared.tasks.spawn(async move {
            let _open = telemetry::SubscriberGauge::open();
            loop {
                let received = tokio::select! {
                    received = alerts.recv() => received,
                    () = token.cancelled() => {
                        let _ = tx.send(Err(Status::from(ScreenError::Unavailable))).await;
                        return;
                    }
                    () = tx.closed() => return, // the supervisor disconnected
                };
                match received {
                    Ok(event) if filter.accepts_event(&event) => {
                        if tx.send(Ok(event_to_pb(&event))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        // The subscriber fell behind the hub's capacity; it resumes with the
                        // newest alerts rather than slowing screening down.
                        telemetry::alerts_dropped(skipped);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
