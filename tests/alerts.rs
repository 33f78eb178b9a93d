use kasuhara_guard::pb::{self, screen_request::Kind};
use tokio_stream::StreamExt;

use crate::util::{shipped_config, start_server};

fn conversation(tenant: &str, id: &str, lines: &[&str]) -> Vec<pb::ScreenRequest> {
    let mut requests = vec![pb::ScreenRequest {
        kind: Some(Kind::Start(pb::ConversationStart {
            conversation_id: id.into(),
            tenant_id: tenant.into(),
            queue: "billing".into(),
            ..Default::default()
        })),
    }];
    for (i, text) in lines.iter().enumerate() {
        requests.push(pb::ScreenRequest {
            kind: Some(Kind::Segment(pb::Segment {
                seq: i as u64 + 1,
                speaker: pb::Speaker::Customer.into(),
                text: (*text).into(),
                is_final: true,
                ..Default::default()
            })),
        });
    }
    requests
}

/// A supervisor subscribed to the tenant receives the alert raised on a concurrent stream,
/// with its evidence; another tenant's and filtered-out alerts never reach it.
#[tokio::test]
async fn subscriber_sees_alerts_of_its_tenant_only() {
    let server = start_server(shipped_config()).await;
    let mut supervisor = server.alerts().await;
    let mut events = supervisor
        .subscribe(pb::SubscribeRequest {
            tenant_id: "tenant-a".into(),
            min_severity: pb::Severity::High.into(),
            categories: vec![],
        })
        .await
        .expect("subscribe")
        .into_inner();

    let mut producer = server.screening().await;
    // Another tenant first: its alert must not arrive.
    let other = producer
        .screen(tokio_stream::iter(conversation("tenant-b", "b-1", &["土下座しろ"])))
        .await
        .expect("b");
    let _: Vec<_> = other.into_inner().collect().await;
    let ours = producer
        .screen(tokio_stream::iter(conversation(
            "tenant-a",
            "a-1",
            &["すみません", "土下座して謝れ"],
        )))
        .await
        .expect("a");
    let responses: Vec<_> = ours.into_inner().collect().await;
    let verdicts = responses
        .iter()
        .filter(|r| {
            matches!(r.as_ref().expect("ok").kind, Some(pb::screen_response::Kind::Verdict(_)))
        })
        .count();
    assert_eq!(verdicts, 2);

    let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
        .await
        .expect("alert arrives within 5 s")
        .expect("stream open")
        .expect("event");
    let Some(pb::alert_event::Kind::Alert(alert)) = event.kind else { panic!("not an alert") };
    assert_eq!(alert.tenant_id, "tenant-a", "help: tenant-b's alert leaked");
    assert_eq!(alert.conversation_id, "a-1");
    assert_eq!(alert.category, pb::Category::Dogeza as i32);
    assert_eq!(alert.seq, 2);
    assert!(alert.evidence[0].quote.contains("土下座"));
    server.stop().await.expect("clean stop");
}

/// Subscribe without a tenant is refused with INVALID_ARGUMENT.
#[tokio::test]
async fn subscribe_requires_tenant() {
    let server = start_server(shipped_config()).await;
    let mut supervisor = server.alerts().await;
    let err = supervisor.subscribe(pb::SubscribeRequest::default()).await.expect_err("no tenant");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    server.stop().await.expect("clean stop");
}
