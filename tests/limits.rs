use kasuhara_guard::limits::Limits;
use kasuhara_guard::pb::{self, screen_request::Kind};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic_types::StatusExt;

use crate::util::{shipped_config, start_server};

fn start(tenant: &str, id: &str) -> pb::ScreenRequest {
    pb::ScreenRequest {
        kind: Some(Kind::Start(pb::ConversationStart {
            conversation_id: id.into(),
            tenant_id: tenant.into(),
            channel: pb::Channel::Chat.into(),
            customer_id: "cust".into(),
            queue: "q".into(),
            agent_id: "a".into(),
            started_at: None,
        })),
    }
}

fn segment(seq: u64, text: &str) -> pb::ScreenRequest {
    pb::ScreenRequest {
        kind: Some(Kind::Segment(pb::Segment {
            seq,
            speaker: pb::Speaker::Customer.into(),
            text: text.into(),
            is_final: true,
            start_ms: seq * 1000,
            end_ms: seq * 1000 + 500,
        })),
    }
}

/// Opens a stream that stays open (its sender is returned) and waits for its first verdict,
/// so the server has admitted it.
async fn open_stream(
    client: &mut pb::screening_service_client::ScreeningServiceClient<tonic::transport::Channel>,
    tenant: &str,
    id: &str,
) -> Result<(mpsc::Sender<pb::ScreenRequest>, tonic::Streaming<pb::ScreenResponse>), tonic::Status>
{
    let (tx, rx) = mpsc::channel(8);
    tx.send(start(tenant, id)).await.expect("queue start");
    tx.send(segment(1, "テレビが映らないんですけど")).await.expect("queue segment");
    let mut responses = client.screen(ReceiverStream::new(rx)).await?.into_inner();
    match responses.next().await {
        Some(Ok(_)) => Ok((tx, responses)),
        Some(Err(status)) => Err(status),
        None => panic!("stream closed without a verdict or status"),
    }
}

/// The response is a verdict with an alert of `category`.
fn raises(response: &pb::ScreenResponse, category: pb::Category) -> bool {
    matches!(&response.kind, Some(pb::screen_response::Kind::Verdict(v))
        if v.alerts.iter().any(|a| a.category == category as i32))
}

fn field_violation(status: &tonic::Status) -> String {
    let details = status.get_error_details();
    let violations = details.bad_request().map(|b| b.field_violations.clone()).unwrap_or_default();
    violations.first().map(|v| v.field.clone()).unwrap_or_default()
}

/// A conversation id live on one stream is refused on a second with ALREADY_EXISTS and a field
/// violation; the first keeps working, and the id is free again once it ends.
#[tokio::test]
async fn duplicate_live_conversation_is_refused() {
    let server = start_server(shipped_config()).await;
    let mut client = server.screening().await;
    let (first, mut first_responses) = open_stream(&mut client, "t", "dup").await.expect("first");
    let err = open_stream(&mut client, "t", "dup").await.expect_err("duplicate refused");
    assert_eq!(err.code(), Code::AlreadyExists, "help: {err:?}");
    assert_eq!(field_violation(&err), "start.conversation_id");

    first.send(segment(2, "土下座しろよ")).await.expect("send");
    let verdict = first_responses.next().await.expect("verdict").expect("ok");
    assert!(
        raises(&verdict, pb::Category::Dogeza),
        "help: the first stream still screens: {verdict:?}"
    );
    drop(first);
    while first_responses.next().await.is_some() {}
    open_stream(&mut client, "t", "dup").await.expect("the id is free after the stream ended");
    server.stop().await.expect("clean stop");
}

/// A tenant at its open-conversation limit gets RESOURCE_EXHAUSTED; other tenants do not.
#[tokio::test]
async fn tenant_open_limit() {
    let mut config = shipped_config();
    config.limits = Limits { max_open_per_tenant: 2, ..Limits::default() };
    let server = start_server(config).await;
    let mut client = server.screening().await;
    let _a = open_stream(&mut client, "busy", "1").await.expect("1");
    let _b = open_stream(&mut client, "busy", "2").await.expect("2");
    let err = open_stream(&mut client, "busy", "3").await.expect_err("tenant full");
    assert_eq!(err.code(), Code::ResourceExhausted, "help: {err:?}");
    assert_eq!(field_violation(&err), "start.tenant_id");
    open_stream(&mut client, "quiet", "1").await.expect("another tenant is unaffected");
    server.stop().await.expect("clean stop");
}

/// A conversation flooding segments is cut off with RESOURCE_EXHAUSTED after its burst, while
/// a second conversation keeps being screened.
#[tokio::test]
async fn segment_flood_is_cut_off() {
    let mut config = shipped_config();
    config.limits = Limits { max_segments_per_second: 5, ..Limits::default() };
    let server = start_server(config).await;
    let mut client = server.screening().await;
    let mut requests = vec![start("t", "flood")];
    requests.extend((1..=40).map(|seq| segment(seq, "テレビが映らない")));
    let mut responses =
        client.screen(tokio_stream::iter(requests)).await.expect("screen").into_inner();
    let mut verdicts = 0;
    let status = loop {
        match responses.next().await {
            Some(Ok(_)) => verdicts += 1,
            Some(Err(status)) => break status,
            None => panic!("the flood was not cut off after {verdicts} verdicts"),
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "help: {status:?}");
    assert_eq!(field_violation(&status), "segment");
    assert!((5..40).contains(&verdicts), "help: the burst passes, then the cut: {verdicts}");

    let (other, mut other_responses) = open_stream(&mut client, "t", "calm").await.expect("calm");
    other.send(segment(2, "ぶっ殺すぞ")).await.expect("send");
    let verdict = other_responses.next().await.expect("verdict").expect("ok");
    assert!(raises(&verdict, pb::Category::Attack), "help: {verdict:?}");
    server.stop().await.expect("clean stop");
}
