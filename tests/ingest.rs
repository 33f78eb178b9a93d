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
/// A long segment is screened off the worker thread (`block_in_place`, which only a
/// multi-thread runtime has, as in `serve`): its verdict still comes in order, with its alert,
/// between the short segments' verdicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_segment_is_screened_off_the_worker() {
    let server = start_server(shipped_config()).await;
    let mut client = server.screening().await;
    let long = format!("{}おいてめえぶっ殺すぞ", "テレビが映らないんですけど".repeat(8));
    assert!(long.len() >= 256, "help: the text must be long enough to leave the worker");
    let requests = vec![
        start("conv-long"),
        segment(1, pb::Speaker::Customer, "テレビが映らないんですけど", true),
        segment(2, pb::Speaker::Customer, &long, true),
        segment(3, pb::Speaker::Customer, "早く直してください", true),
        pb::ScreenRequest { kind: Some(Kind::End(pb::ConversationEnd {})) },
    ];
    let mut responses =
        client.screen(tokio_stream::iter(requests)).await.expect("screen").into_inner();
    let mut verdicts = Vec::new();
    while let Some(r) = responses.next().await {
        if let Some(pb::screen_response::Kind::Verdict(v)) = r.expect("response").kind {
            verdicts.push(v);
        }
    }
    assert_eq!(verdicts.iter().map(|v| v.seq).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert!(verdicts[0].alerts.is_empty() && verdicts[2].alerts.is_empty());
    let attack = verdicts[1]
        .alerts
        .iter()
        .find(|a| a.category == pb::Category::Attack as i32)
        .expect("ATTACK alert in the long segment");
    assert_eq!(attack.severity, pb::Severity::Critical as i32);
    server.stop().await.expect("clean stop");
}

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

/// An interim hypothesis raises a provisional alert that supervisors see at once; the final
/// text retracts it with an update carrying the same id, on both streams.
#[tokio::test]
async fn interim_alert_is_retracted_on_both_streams() {
    let server = start_server(shipped_config()).await;
    let mut supervisor = server.alerts().await;
    let mut events = supervisor
        .subscribe(pb::SubscribeRequest { tenant_id: "tenant-a".into(), ..Default::default() })
        .await
        .expect("subscribe")
        .into_inner();
    let mut client = server.screening().await;
    let requests = vec![
        start("conv-interim"),
        segment(1, pb::Speaker::Customer, "らいげつからばか", false),
        segment(2, pb::Speaker::Customer, "来月からバカンスで海外に行くんです", true),
        pb::ScreenRequest { kind: Some(Kind::End(pb::ConversationEnd {})) },
    ];
    let responses: Vec<_> = client
        .screen(tokio_stream::iter(requests))
        .await
        .expect("screen")
        .into_inner()
        .collect()
        .await;
    let kinds: Vec<_> = responses.into_iter().map(|r| r.expect("ok").kind.expect("kind")).collect();
    let pb::screen_response::Kind::Verdict(first) = &kinds[0] else {
        panic!("verdict first: {kinds:?}")
    };
    assert!(first.alerts.is_empty(), "help: interim alerts are not confirmed alerts");
    let provisional = first.provisional_alerts.first().expect("ばか raises a provisional alert");
    assert_eq!(provisional.status, pb::AlertStatus::Provisional as i32);
    let pb::screen_response::Kind::Verdict(second) = &kinds[1] else {
        panic!("verdict second: {kinds:?}")
    };
    assert!(second.alerts.is_empty(), "help: バカンス is not abuse");
    let pb::screen_response::Kind::Update(update) = &kinds[2] else {
        panic!("update third: {kinds:?}")
    };
    let retracted = update.alert.as_ref().expect("alert");
    assert_eq!(
        (retracted.alert_id.as_str(), retracted.status),
        (provisional.alert_id.as_str(), pb::AlertStatus::Retracted as i32)
    );
    assert!(matches!(kinds.last(), Some(pb::screen_response::Kind::Summary(_))));

    // The supervisor saw the provisional alert, then its retraction, then the summary.
    let mut seen = Vec::new();
    while seen.len() < 3 {
        let event = tokio::time::timeout(std::time::Duration::from_secs(5), events.next())
            .await
            .expect("event in time")
            .expect("open")
            .expect("ok");
        seen.push(event.kind.expect("kind"));
    }
    assert!(
        matches!(&seen[0], pb::alert_event::Kind::Alert(a) if a.alert_id == provisional.alert_id)
    );
    assert!(
        matches!(&seen[1], pb::alert_event::Kind::Update(u) if u.alert.as_ref().is_some_and(|a| a.status == pb::AlertStatus::Retracted as i32))
    );
    assert!(
        matches!(&seen[2], pb::alert_event::Kind::Summary(s) if s.conversation_id == "conv-interim")
    );
    server.stop().await.expect("clean stop");
}

/// A conversation whose producer goes quiet is closed after the tenant's idle timeout with a
/// summary (reason "idle"); paused time makes the ten minutes pass at once.
#[tokio::test(start_paused = true)]
async fn idle_conversation_ends_with_a_summary() {
    let server = start_server(shipped_config()).await;
    let mut client = server.screening().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(start("conv-idle")).await.expect("send");
    tx.send(segment(1, pb::Speaker::Customer, "土下座しろ", true)).await.expect("send");
    let mut responses = client
        .screen(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("screen")
        .into_inner();
    let first = responses.next().await.expect("verdict").expect("ok");
    assert!(matches!(first.kind, Some(pb::screen_response::Kind::Verdict(_))));
    // The producer keeps its side open (tx alive) and sends nothing more.
    let last = responses.next().await.expect("summary").expect("ok");
    let Some(pb::screen_response::Kind::Summary(summary)) = last.kind else {
        panic!("expected a summary, got {last:?}")
    };
    assert_eq!(summary.reason, "idle");
    assert_eq!(summary.categories, vec![pb::Category::Dogeza as i32]);
    drop(tx);
    server.stop().await.expect("clean stop");
}
