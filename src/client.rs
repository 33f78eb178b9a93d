//! A gRPC client driver that replays a labelled corpus through the public API, exactly as an
//! outside platform would: `ScreenText` per utterance, one `Screen` stream per conversation.
//! `kasuhara-guard eval` and the integration tests use it.

use std::io::IsTerminal;

use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::eval::{ConversationCase, ConversationOutcome, Corpus, Raised, UtteranceOutcome};
use crate::grpc::{category_from_pb, severity_from_pb};
use crate::pb;
use crate::pb::screening_service_client::ScreeningServiceClient;

/// Why a corpus could not be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The address tried.
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// A call failed.
    #[error("{case}: server answered {code:?}: {message}")]
    Call {
        /// The corpus id of the case.
        case: String,
        /// The gRPC status code.
        code: tonic::Code,
        /// The status message.
        message: String,
    },
}

fn speaker(s: &str) -> pb::Speaker {
    match s {
        "agent" => pb::Speaker::Agent,
        _ => pb::Speaker::Customer,
    }
}

fn channel(s: &str) -> pb::Channel {
    match s {
        "chat" => pb::Channel::Chat,
        _ => pb::Channel::Voice,
    }
}

fn raised(seq: u64, alert: &pb::Alert) -> Option<Raised> {
    Some(Raised {
        seq,
        category: category_from_pb(alert.category)?,
        severity: severity_from_pb(alert.severity)?,
    })
}

/// Shows `done/total` on stderr when it is a terminal, so long runs visibly progress without
/// cluttering logs or pipes.
struct Progress {
    label: &'static str,
    total: usize,
    enabled: bool,
}

impl Progress {
    fn new(label: &'static str, total: usize) -> Self {
        Self { label, total, enabled: std::io::stderr().is_terminal() }
    }

    fn tick(&self, done: usize) {
        if self.enabled && (done.is_multiple_of(25) || done == self.total) {
            eprint!("\r{} {done}/{}", self.label, self.total);
            if done == self.total {
                eprintln!();
            }
        }
    }
}

/// Connects to `endpoint` (e.g. `http://127.0.0.1:50051`).
///
/// # Errors
/// [`ReplayError::Connect`] when the server cannot be reached.
pub async fn connect(endpoint: &str) -> Result<ScreeningServiceClient<Channel>, ReplayError> {
    ScreeningServiceClient::connect(endpoint.to_owned())
        .await
        .map_err(|source| ReplayError::Connect { endpoint: endpoint.to_owned(), source })
}

/// Screens every utterance of `corpus` with `ScreenText` under `tenant_id`.
///
/// # Errors
/// The first call that fails.
pub async fn replay_utterances(
    client: &mut ScreeningServiceClient<Channel>,
    corpus: &Corpus,
    tenant_id: &str,
) -> Result<Vec<UtteranceOutcome>, ReplayError> {
    let progress = Progress::new("utterances", corpus.utterances.len());
    let mut outcomes = Vec::with_capacity(corpus.utterances.len());
    for (i, case) in corpus.utterances.iter().enumerate() {
        let request = pb::ScreenTextRequest {
            tenant_id: tenant_id.to_owned(),
            channel: channel(&case.channel).into(),
            speaker: speaker(&case.speaker).into(),
            text: case.text.clone(),
        };
        let response = client.screen_text(request).await.map_err(|s| ReplayError::Call {
            case: case.id.clone(),
            code: s.code(),
            message: s.message().to_owned(),
        })?;
        let raised = response.into_inner().alerts.iter().filter_map(|a| raised(0, a)).collect();
        outcomes.push(UtteranceOutcome { id: case.id.clone(), raised });
        progress.tick(i + 1);
    }
    Ok(outcomes)
}

/// Streams every conversation of `corpus` through `Screen`, in file order (so repeated
/// contacts of one customer arrive in order), and collects the alerts of every verdict.
///
/// # Errors
/// The first stream that fails.
pub async fn replay_conversations(
    client: &mut ScreeningServiceClient<Channel>,
    corpus: &Corpus,
    tenant_id: &str,
) -> Result<Vec<ConversationOutcome>, ReplayError> {
    let progress = Progress::new("conversations", corpus.conversations.len());
    let mut outcomes = Vec::with_capacity(corpus.conversations.len());
    for (i, case) in corpus.conversations.iter().enumerate() {
        outcomes.push(replay_conversation(client, case, tenant_id).await?);
        progress.tick(i + 1);
    }
    Ok(outcomes)
}

async fn replay_conversation(
    client: &mut ScreeningServiceClient<Channel>,
    case: &ConversationCase,
    tenant_id: &str,
) -> Result<ConversationOutcome, ReplayError> {
    use pb::screen_request::Kind;
    let call_error = |s: tonic::Status| ReplayError::Call {
        case: case.id.clone(),
        code: s.code(),
        message: s.message().to_owned(),
    };
    let mut requests = vec![pb::ScreenRequest {
        kind: Some(Kind::Start(pb::ConversationStart {
            conversation_id: case.id.clone(),
            tenant_id: tenant_id.to_owned(),
            channel: channel(&case.channel).into(),
            customer_id: case.customer_id.clone(),
            queue: String::new(),
            agent_id: String::new(),
            started_at: None,
        })),
    }];
    requests.extend(case.segments.iter().map(|s| pb::ScreenRequest {
        kind: Some(Kind::Segment(pb::Segment {
            seq: s.seq,
            speaker: speaker(&s.speaker).into(),
            text: s.text.clone(),
            is_final: s.is_final,
            start_ms: s.start_ms,
            end_ms: s.end_ms,
        })),
    }));
    requests.push(pb::ScreenRequest { kind: Some(Kind::End(pb::ConversationEnd {})) });
    let mut responses =
        client.screen(tokio_stream::iter(requests)).await.map_err(call_error)?.into_inner();
    // Confirmed alerts only: provisional ones count once a final confirms them (they then
    // appear in that final's verdict), and retracted ones never.
    let mut raised_alerts = Vec::new();
    while let Some(response) = responses.next().await {
        if let Some(pb::screen_response::Kind::Verdict(v)) = response.map_err(call_error)?.kind {
            raised_alerts.extend(v.alerts.iter().filter_map(|a| raised(v.seq, a)));
        }
    }
    Ok(ConversationOutcome { id: case.id.clone(), raised: raised_alerts })
}
