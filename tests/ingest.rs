use kasuhara_guard::pb::{self, screen_request::Kind};
use tokio_stream::StreamExt;
use tonic::Code;

use crate::util::{shipped_config, start_server};

fn start(id: &str) -> pb::ScreenRequest {
    pb::ScreenRequest {
        kind: Some(Kind::Start(pb::ConversationStart {
            conversation_id: id.into(),
            tenant_id: "tenant-a".into(),
            channel: pb::Channel::Voice.into(),
            customer_id: "cust-1".into(),
            queue: "support".into(),
            agent_id: "agent-7".into(),
            started_at: None,
        })),
    }
}

fn segment(seq: u64, speaker: pb::Speaker, text: &str, is_final: bool) -> pb::ScreenRequest {
    pb::ScreenRequest {
        kind: Some(Kind::Segment(pb::Segment {
            seq,
            speaker: speaker.into(),
            text: text.into(),
            is_final,
            start_ms: seq * 1000,
            end_ms: seq * 1000 + 900,
        })),
    }
}

fn text_request(speaker: pb::Speaker, text: &str) -> pb::ScreenTextRequest {
    pb::ScreenTextRequest {
        tenant_id: "tenant-a".into(),
        channel: pb::Channel::Chat.into(),
        speaker: speaker.into(),
        text: text.into(),
    }
}

/// Every segment gets one verdict in order; the threat raises ATTACK at CRITICAL with the
/// exact original words as evidence, and agent speech raises nothing.
#[tokio::test]
async fn stream_gets_a_verdict_per_segment() {
    let server = start_server(shipped_config()).await;
    let mut client = server.screening().await;
    let requests = vec![
        start("conv-1"),
        segment(1, pb::Speaker::Agent, "お電話ありがとうございますばかなことを申しました", true),
        segment(2, pb::Speaker::Customer, "テレビが映らないんですけど", true),
        segment(3, pb::Speaker::Customer, "おいてめえぶっ殺すぞ", true),
        pb::ScreenRequest { kind: Some(Kind::End(pb::ConversationEnd {})) },
    ];
    let mut responses =
        client.screen(tokio_stream::iter(requests)).await.expect("screen").into_inner();
    let mut verdicts = Vec::new();
    let mut summary = None;
    while let Some(r) = responses.next().await {
        match r.expect("verdict").kind {
            Some(pb::screen_response::Kind::Verdict(v)) => verdicts.push(v),
            Some(pb::screen_response::Kind::Summary(s)) => summary = Some(s),
            other => panic!("unexpected response {other:?}"),
        }
    }
    assert_eq!(verdicts.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(verdicts[0].alerts.is_empty(), "help: agent speech must never alert");
    assert!(verdicts[1].alerts.is_empty(), "help: a legitimate complaint must stay silent");
    let attack = verdicts[2]
        .alerts
        .iter()
        .find(|a| a.category == pb::Category::Attack as i32)
        .expect("ATTACK alert for ぶっ殺す");
    assert_eq!(attack.severity, pb::Severity::Critical as i32);
    assert_eq!(attack.conversation_id, "conv-1");
    assert_eq!(attack.queue, "support");
    let evidence = &attack.evidence[0];
    // Offsets count chars of the customer's final transcript: segment 2, then segment 3.
    let original: Vec<char> = "テレビが映らないんですけどおいてめえぶっ殺すぞ".chars().collect();
    let quoted: String = original[evidence.start as usize..evidence.end as usize].iter().collect();
    assert_eq!(quoted, evidence.quote, "help: offsets must point at the quote");
    assert!(evidence.quote.contains("殺す"), "help: got {:?}", evidence.quote);
    assert!(!evidence.entry_id.is_empty());
    assert!(!attack.policy_item.is_empty() && !attack.recommended_action.is_empty());
    assert_eq!(attack.status, pb::AlertStatus::Confirmed as i32);
    assert!(
        attack.risk_score >= 0.9,
        "help: a CRITICAL alert weighs 0.9, got {}",
        attack.risk_score
    );
    let summary = summary.expect("a summary ends the stream");
    assert_eq!(summary.reason, "end");
    assert_eq!(summary.segments, 3);
    assert_eq!(summary.peak_severity, pb::Severity::Critical as i32);
    assert_eq!(summary.alert_ids, vec![attack.alert_id.clone()]);
    server.stop().await.expect("clean stop");
}

/// ScreenText flags abuse and a kneeling demand, and stays silent on trap words.
#[tokio::test]
async fn screen_text_abusive_and_benign() {
    let server = start_server(shipped_config()).await;
    let mut client = server.screening().await;
    for (text, want) in [
        ("土下座しろ", Some(pb::Category::Dogeza)),
        ("ぶっ殺すぞ", Some(pb::Category::Attack)),
        ("来月からバカンスで海外に行きます", None),
        ("殺菌スプレーの在庫はありますか", None),
        ("返金してください", None),
    ] {
        let alerts = client
            .screen_text(text_request(pb::Speaker::Customer, text))
            .await
            .expect("call")
            .into_inner()
            .alerts;
        match want {
            Some(category) => assert!(
                alerts.iter().any(|a| a.category == category as i32),
                "help: {text:?} should raise {category:?}, got {alerts:?}"
            ),
            None => assert!(alerts.is_empty(), "help: {text:?} must stay silent, got {alerts:?}"),
        }
    }
    let agent =
        client.screen_text(text_request(pb::Speaker::Agent, "土下座しろ")).await.expect("call");
    assert!(agent.into_inner().alerts.is_empty(), "help: agent speech never alerts");
    server.stop().await.expect("clean stop");
}

/// Bad input gets a precise status, and the server keeps screening afterwards.
#[tokio::test]
async fn bad_input_gets_precise_errors() {
    let server = start_server(shipped_config()).await;
    let mut client = server.screening().await;

    let err = client
        .screen_text(text_request(pb::Speaker::Unspecified, "x"))
        .await
        .expect_err("no speaker");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("speaker"), "help: {}", err.message());

    let huge = "あ".repeat(5000);
    let err =
        client.screen_text(text_request(pb::Speaker::Customer, &huge)).await.expect_err("too long");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("text"), "help: {}", err.message());

    let mut no_tenant = text_request(pb::Speaker::Customer, "x");
    no_tenant.tenant_id.clear();
    let err = client.screen_text(no_tenant).await.expect_err("no tenant");
    assert_eq!(err.code(), Code::InvalidArgument);

    // A segment before ConversationStart.
    let mut responses = client
        .screen(tokio_stream::iter(vec![segment(1, pb::Speaker::Customer, "こんにちは", true)]))
        .await
        .expect("stream opens")
        .into_inner();
    let status = responses.next().await.expect("an answer").expect_err("rejected");
    assert_eq!(status.code(), Code::FailedPrecondition);

    // A seq that goes backwards.
    let requests = vec![
        start("conv-2"),
        segment(5, pb::Speaker::Customer, "こんにちは", true),
        segment(4, pb::Speaker::Customer, "こんにちは", true),
    ];
    let mut responses =
        client.screen(tokio_stream::iter(requests)).await.expect("stream").into_inner();
    assert!(responses.next().await.expect("verdict").is_ok());
    let status = responses.next().await.expect("an answer").expect_err("rejected");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("segment.seq"), "help: {}", status.message());

    // Still serving.
    let ok = client
        .screen_text(text_request(pb::Speaker::Customer, "土下座しろ"))
        .await
        .expect("still works");
    assert!(!ok.into_inner().alerts.is_empty());
    server.stop().await.expect("clean stop");
}
