use std::collections::HashMap;
use std::time::Duration;

use kasuhara_guard::config::Config;
use kasuhara_guard::pb::{self, alert_event::Kind as Event, screen_request::Kind};
use tokio_stream::StreamExt;
use tonic::Streaming;
use tonic_types::StatusExt;

use crate::util::{shipped_config, start_server};

/// Generous bound for an event that is already on its way; only a hang trips it.
const PATIENCE: Duration = Duration::from_secs(10);

fn conversation(tenant: &str, id: &str, queue: &str, lines: &[&str]) -> Vec<pb::ScreenRequest> {
    let mut requests = vec![pb::ScreenRequest {
        kind: Some(Kind::Start(pb::ConversationStart {
            conversation_id: id.into(),
            tenant_id: tenant.into(),
            queue: queue.into(),
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

/// Streams one conversation to its end; returns the ids of every alert in its verdicts and
/// how many verdicts came back.
async fn screen_conversation(
    producer: &mut pb::screening_service_client::ScreeningServiceClient<tonic::transport::Channel>,
    requests: Vec<pb::ScreenRequest>,
) -> (Vec<String>, usize) {
    let responses = producer.screen(tokio_stream::iter(requests)).await.expect("screen");
    let mut ids = Vec::new();
    let mut verdicts = 0;
    let mut responses = responses.into_inner();
    while let Some(response) = responses.next().await {
        if let Some(pb::screen_response::Kind::Verdict(v)) = response.expect("response").kind {
            verdicts += 1;
            ids.extend(v.alerts.iter().chain(&v.provisional_alerts).map(|a| a.alert_id.clone()));
        }
    }
    (ids, verdicts)
}

async fn next_event(events: &mut Streaming<pb::AlertEvent>) -> pb::AlertEvent {
    tokio::time::timeout(PATIENCE, events.next())
        .await
        .expect("an event within the patience bound")
        .expect("stream open")
        .expect("event, not an error")
}

/// The next event that is not a heartbeat.
async fn next_non_heartbeat(events: &mut Streaming<pb::AlertEvent>) -> pb::AlertEvent {
    loop {
        let event = next_event(events).await;
        if !matches!(event.kind, Some(Event::Heartbeat(_))) {
            return event;
        }
    }
}

async fn subscribe(
    server: &crate::util::TestServer,
    request: pb::SubscribeRequest,
) -> Streaming<pb::AlertEvent> {
    server.alerts().await.subscribe(request).await.expect("subscribe").into_inner()
}

fn tenant(id: &str) -> pb::SubscribeRequest {
    pb::SubscribeRequest { tenant_id: id.into(), ..Default::default() }
}

/// A supervisor subscribed to the tenant receives the alert raised on a concurrent stream,
/// with its evidence in context and a cursor; another tenant's and filtered-out alerts never
/// reach it.
#[tokio::test]
async fn subscriber_sees_alerts_of_its_tenant_only() {
    let server = start_server(shipped_config()).await;
    let mut events = subscribe(
        &server,
        pb::SubscribeRequest { min_severity: pb::Severity::High.into(), ..tenant("tenant-a") },
    )
    .await;

    let mut producer = server.screening().await;
    // Another tenant first: its alert must not arrive.
    screen_conversation(&mut producer, conversation("tenant-b", "b-1", "billing", &["土下座しろ"]))
        .await;
    let (_, verdicts) = screen_conversation(
        &mut producer,
        conversation("tenant-a", "a-1", "billing", &["すみません", "土下座して謝れよ、早く"]),
    )
    .await;
    assert_eq!(verdicts, 2);

    let event = next_event(&mut events).await;
    assert!(!event.cursor.is_empty(), "help: every event carries a cursor");
    let Some(Event::Alert(alert)) = event.kind else { panic!("not an alert: {event:?}") };
    assert_eq!(alert.tenant_id, "tenant-a", "help: tenant-b's alert leaked");
    assert_eq!(alert.conversation_id, "a-1");
    assert_eq!(alert.category, pb::Category::Dogeza as i32);
    assert_eq!(alert.seq, 2);
    let evidence = &alert.evidence[0];
    assert!(evidence.quote.contains("土下座"));
    let context: Vec<char> = evidence.context.chars().collect();
    let start = evidence.context_start as usize;
    let quoted: String =
        context[start..start + (evidence.end - evidence.start) as usize].iter().collect();
    assert_eq!(quoted, evidence.quote, "help: context_start must point at the quote");
    assert!(
        evidence.context.ends_with("早く"),
        "help: context reaches past the quote: {context:?}"
    );
    server.stop().await.expect("clean stop");
}

/// Queue and conversation filters let through only the conversations asked for, summaries
/// included.
#[tokio::test]
async fn queue_and_conversation_filters() {
    let server = start_server(shipped_config()).await;
    let mut by_queue =
        subscribe(&server, pb::SubscribeRequest { queues: vec!["sales".into()], ..tenant("t") })
            .await;
    let mut by_conversation = subscribe(
        &server,
        pb::SubscribeRequest { conversation_ids: vec!["c-2".into()], ..tenant("t") },
    )
    .await;
    let mut producer = server.screening().await;
    screen_conversation(&mut producer, conversation("t", "c-1", "billing", &["土下座しろ"])).await;
    screen_conversation(&mut producer, conversation("t", "c-2", "sales", &["土下座しろ"])).await;
    for events in [&mut by_queue, &mut by_conversation] {
        let Some(Event::Alert(alert)) = next_non_heartbeat(events).await.kind else {
            panic!("expected c-2's alert")
        };
        assert_eq!(alert.conversation_id, "c-2", "help: c-1 is on another queue");
        let Some(Event::Summary(summary)) = next_non_heartbeat(events).await.kind else {
            panic!("expected c-2's summary")
        };
        assert_eq!(summary.conversation_id, "c-2");
    }
    server.stop().await.expect("clean stop");
}

/// Bad subscriptions are refused with INVALID_ARGUMENT and a field violation naming the field.
#[tokio::test]
async fn subscribe_validates_its_fields() {
    let server = start_server(shipped_config()).await;
    let mut supervisor = server.alerts().await;
    for (request, field) in [
        (pb::SubscribeRequest::default(), "tenant_id"),
        (pb::SubscribeRequest { cursor: "yesterday".into(), ..tenant("t") }, "cursor"),
        (pb::SubscribeRequest { queues: vec![String::new()], ..tenant("t") }, "queues"),
        (pb::SubscribeRequest { categories: vec![99], ..tenant("t") }, "categories"),
    ] {
        let err = supervisor.subscribe(request).await.expect_err(field);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "help: {field}");
        let violations = err.get_error_details().bad_request().expect("bad request").clone();
        assert_eq!(violations.field_violations[0].field, field);
    }
    server.stop().await.expect("clean stop");
}

/// An idle stream carries heartbeats whose cursor is the subscriber's position, so a
/// supervisor can tell a quiet floor from a dead stream and resume from a heartbeat.
#[tokio::test]
async fn idle_stream_gets_heartbeats() {
    let config = Config { heartbeat_interval: Duration::from_millis(50), ..shipped_config() };
    let server = start_server(config).await;
    let mut events = subscribe(&server, tenant("t")).await;
    let first = next_event(&mut events).await;
    assert!(matches!(first.kind, Some(Event::Heartbeat(_))), "help: {first:?}");
    let mut producer = server.screening().await;
    screen_conversation(&mut producer, conversation("t", "c", "q", &["土下座しろ"])).await;
    let alert = next_non_heartbeat(&mut events).await;
    let summary = next_non_heartbeat(&mut events).await;
    assert!(matches!(summary.kind, Some(Event::Summary(_))));
    let heartbeat = next_event(&mut events).await;
    assert!(matches!(heartbeat.kind, Some(Event::Heartbeat(_))), "help: {heartbeat:?}");
    assert_eq!(heartbeat.cursor, summary.cursor, "help: a heartbeat carries the position");
    assert_ne!(alert.cursor, summary.cursor);
    server.stop().await.expect("clean stop");
}

/// A supervisor that reconnects with its cursor 1,000 times, at random points, while
/// conversations keep raising alerts, receives every event exactly once, in order, and never
/// a gap notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_with_cursor_receive_every_alert_once() {
    const RECONNECTS: usize = 1000;
    const CONVERSATIONS: usize = 150;
    let seed = fastrand::u64(..);
    println!("seed {seed} (set KASUHARA_TEST_SEED to repeat)");
    let seed =
        std::env::var("KASUHARA_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(seed);
    let mut rng = fastrand::Rng::with_seed(seed);

    let mut config = Config { heartbeat_interval: Duration::from_millis(20), ..shipped_config() };
    config.policy.default.alert_history = 100_000;
    let server = start_server(config).await;

    let mut producer = server.screening().await;
    let producing = tokio::spawn(async move {
        let mut alert_ids = Vec::new();
        for i in 0..CONVERSATIONS {
            let lines: &[&str] = if i % 2 == 0 {
                &["土下座しろ", "おいてめえぶっ殺すぞ"]
            } else {
                &["ネットに晒すぞ"]
            };
            let (ids, _) = screen_conversation(
                &mut producer,
                conversation("t", &format!("c-{i}"), "q", lines),
            )
            .await;
            alert_ids.extend(ids);
        }
        alert_ids
    });

    let mut received: HashMap<String, usize> = HashMap::new();
    let mut summaries: HashMap<String, usize> = HashMap::new();
    // "0" is the oldest event: the producer may publish before the first subscription opens,
    // and an empty cursor (live only) would then miss what came before it.
    let mut cursor = String::from("0");
    let mut order = Vec::new();
    let mut take = |event: pb::AlertEvent, cursor: &mut String| {
        match event.kind {
            Some(Event::Alert(a)) => *received.entry(a.alert_id).or_default() += 1,
            Some(Event::Summary(s)) => *summaries.entry(s.conversation_id).or_default() += 1,
            Some(Event::Gap(gap)) => panic!("help: no event may be lost on resume: {gap:?}"),
            _ => {}
        }
        order.push(event.cursor.clone());
        *cursor = event.cursor;
    };
    let mut alerts = server.alerts().await;
    for _ in 0..RECONNECTS {
        let request = pb::SubscribeRequest { cursor: cursor.clone(), ..tenant("t") };
        let mut events = alerts.subscribe(request).await.expect("subscribe").into_inner();
        for _ in 0..rng.usize(0..=4) {
            let event = next_event(&mut events).await;
            take(event, &mut cursor);
        }
        // Dropping the stream disconnects, wherever replay or live delivery stood.
    }
    let alert_ids = producing.await.expect("producer");
    // Catch up: after the replay, a heartbeat says the subscriber is at the head.
    let mut events = alerts
        .subscribe(pb::SubscribeRequest { cursor: cursor.clone(), ..tenant("t") })
        .await
        .expect("subscribe")
        .into_inner();
    loop {
        let event = next_event(&mut events).await;
        if matches!(event.kind, Some(Event::Heartbeat(_))) {
            break;
        }
        take(event, &mut cursor);
    }
    assert!(alert_ids.len() >= CONVERSATIONS, "help: the producer raised too few alerts");
    for id in &alert_ids {
        assert_eq!(received.get(id), Some(&1), "help: alert {id} (seed {seed})");
    }
    assert_eq!(received.len(), alert_ids.len(), "help: an alert nobody raised (seed {seed})");
    assert_eq!(summaries.len(), CONVERSATIONS);
    assert!(summaries.values().all(|&n| n == 1), "help: a summary twice (seed {seed})");
    server.stop().await.expect("clean stop");
}

/// A cursor older than the history gets a gap notice with the number of events lost, then
/// the history.
#[tokio::test]
async fn expired_cursor_gets_a_gap_notice() {
    let mut config = shipped_config();
    config.policy.default.alert_history = 2;
    let server = start_server(config).await;
    let mut events = subscribe(&server, tenant("t")).await;
    let mut producer = server.screening().await;
    for i in 0..3 {
        screen_conversation(
            &mut producer,
            conversation("t", &format!("c-{i}"), "q", &["土下座しろ"]),
        )
        .await;
    }
    // Six events: alert and summary per conversation; the history keeps the last two.
    let first = next_event(&mut events).await;
    drop(events);
    let mut resumed =
        subscribe(&server, pb::SubscribeRequest { cursor: first.cursor, ..tenant("t") }).await;
    let Some(Event::Gap(gap)) = next_event(&mut resumed).await.kind else { panic!("no gap") };
    assert_eq!(gap.missed, 3);
    assert_eq!(gap.reason, pb::GapReason::HistoryExpired as i32);
    let Some(Event::Alert(alert)) = next_event(&mut resumed).await.kind else { panic!("alert") };
    assert_eq!(alert.conversation_id, "c-2");
    server.stop().await.expect("clean stop");
}

/// A supervisor that never reads does not hold screening up: a second conversation still gets
/// every verdict, and when the stalled supervisor finally reads it is told how many events it
/// skipped.
#[tokio::test]
async fn stalled_subscriber_does_not_block_screening() {
    const CONVERSATIONS: usize = 60;
    let config = Config { alert_buffer: 4, ..shipped_config() };
    let server = start_server(config).await;
    // A tiny HTTP/2 window, so the stalled stream backs up into the server at once.
    let channel = tonic::transport::Endpoint::from_shared(server.endpoint())
        .expect("endpoint")
        .initial_stream_window_size(Some(1024))
        .initial_connection_window_size(Some(1024))
        .connect()
        .await
        .expect("connect");
    let mut stalled = pb::alert_service_client::AlertServiceClient::new(channel)
        .subscribe(tenant("t"))
        .await
        .expect("subscribe")
        .into_inner();

    let mut producer = server.screening().await;
    for i in 0..CONVERSATIONS {
        screen_conversation(
            &mut producer,
            conversation("t", &format!("c-{i}"), "q", &["土下座しろ", "ぶっ殺すぞ"]),
        )
        .await;
    }
    let (ids, verdicts) = screen_conversation(
        &mut producer,
        conversation("t", "second", "q", &["すみません", "土下座しろ", "ネットに晒すぞ"]),
    )
    .await;
    assert_eq!(verdicts, 3, "help: screening must not wait for the stalled supervisor");
    assert!(!ids.is_empty());

    let mut skipped = 0;
    loop {
        match next_event(&mut stalled).await.kind {
            Some(Event::Gap(gap)) => {
                assert_eq!(gap.reason, pb::GapReason::SubscriberLagged as i32);
                skipped += gap.missed;
            }
            Some(Event::Summary(s)) if s.conversation_id == "second" => break,
            _ => {}
        }
    }
    assert!(skipped > 0, "help: the stalled subscriber must be told what it skipped");
    server.stop().await.expect("clean stop");
}

/// Acknowledge records who and what, reaches the tenant's other subscribers, counts a false
/// alarm against the alert's lexicon entries, and refuses unknown alerts with NOT_FOUND.
#[tokio::test]
async fn acknowledge_streams_and_counts_false_alarms() {
    let server = start_server(shipped_config()).await;
    let mut other_supervisor = subscribe(&server, tenant("t")).await;
    let mut producer = server.screening().await;
    let (ids, _) =
        screen_conversation(&mut producer, conversation("t", "c", "q", &["土下座しろ"])).await;
    let Some(Event::Alert(alert)) = next_event(&mut other_supervisor).await.kind else {
        panic!("alert")
    };
    assert_eq!(ids, std::slice::from_ref(&alert.alert_id));

    let mut alerts = server.alerts().await;
    let recorded = alerts
        .acknowledge(pb::AcknowledgeRequest {
            tenant_id: "t".into(),
            alert_id: alert.alert_id.clone(),
            acknowledged_by: "supervisor-1".into(),
            outcome: pb::AckOutcome::FalseAlarm.into(),
            note: "冗談の文脈".into(),
        })
        .await
        .expect("acknowledge")
        .into_inner()
        .acknowledgement
        .expect("acknowledgement");
    assert_eq!(recorded.acknowledged_by, "supervisor-1");
    assert!(recorded.acknowledged_at.is_some());

    // The conversation's summary came before the acknowledgement was made.
    let summary = next_non_heartbeat(&mut other_supervisor).await;
    assert!(matches!(summary.kind, Some(Event::Summary(_))), "help: {summary:?}");
    let Some(Event::Acknowledgement(streamed)) =
        next_non_heartbeat(&mut other_supervisor).await.kind
    else {
        panic!("expected the acknowledgement")
    };
    assert_eq!(streamed.alert.expect("alert").alert_id, alert.alert_id);
    assert_eq!(streamed.outcome, pb::AckOutcome::FalseAlarm as i32);
    assert_eq!(streamed.note, "冗談の文脈");

    let stats = alerts
        .entry_stats(pb::EntryStatsRequest { tenant_id: "t".into() })
        .await
        .expect("stats")
        .into_inner();
    let entry = &alert.evidence[0].entry_id;
    let stat = stats.entries.iter().find(|s| &s.entry_id == entry).expect("entry listed");
    assert_eq!((stat.alerts, stat.acknowledged, stat.false_alarms), (1, 1, 1));

    for (request, code) in [
        (
            pb::AcknowledgeRequest {
                tenant_id: "t".into(),
                alert_id: "al-unknown".into(),
                acknowledged_by: "s".into(),
                ..Default::default()
            },
            tonic::Code::NotFound,
        ),
        (
            pb::AcknowledgeRequest {
                tenant_id: "other".into(),
                alert_id: alert.alert_id.clone(),
                acknowledged_by: "s".into(),
                ..Default::default()
            },
            tonic::Code::NotFound,
        ),
        (
            pb::AcknowledgeRequest {
                tenant_id: "t".into(),
                alert_id: alert.alert_id.clone(),
                ..Default::default()
            },
            tonic::Code::InvalidArgument,
        ),
    ] {
        let err = alerts.acknowledge(request).await.expect_err("refused");
        assert_eq!(err.code(), code, "help: {err:?}");
    }
    server.stop().await.expect("clean stop");
}
