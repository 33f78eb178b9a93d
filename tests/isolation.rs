use std::net::SocketAddr;
use std::time::Duration;

use kasuhara_guard::auth::Role;
use kasuhara_guard::pb::admin_service_client::AdminServiceClient;
use kasuhara_guard::pb::{self, alert_event::Kind as Event, screen_request::Kind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status, Streaming};

use crate::util::{TestServer, Tokens, bearer, shipped_config, start_server_with_console};

/// Generous bound for an event already on its way; only a hang trips it.
const PATIENCE: Duration = Duration::from_secs(20);
const A: &str = "tenant-a";
const B: &str = "tenant-b";
/// Tenant A's tokens, one per role: each is tried against everything of B's.
const A_TOKENS: [&str; 3] = ["a-producer", "a-supervisor", "a-admin"];

fn conversation(tenant: &str, id: &str) -> Vec<pb::ScreenRequest> {
    vec![
        pb::ScreenRequest {
            kind: Some(Kind::Start(pb::ConversationStart {
                conversation_id: id.into(),
                tenant_id: tenant.into(),
                queue: "billing".into(),
                ..Default::default()
            })),
        },
        pb::ScreenRequest {
            kind: Some(Kind::Segment(pb::Segment {
                seq: 1,
                speaker: pb::Speaker::Customer.into(),
                text: "おいてめえぶっ殺すぞ".into(),
                is_final: true,
                ..Default::default()
            })),
        },
    ]
}

/// Streams a conversation; the ids of its alerts, or the status it ended with.
async fn screen(
    server: &TestServer,
    token: &str,
    tenant: &str,
    id: &str,
) -> Result<Vec<String>, Status> {
    let mut client = server.screening().await;
    let request = bearer(token, tokio_stream::iter(conversation(tenant, id)));
    let mut responses = client.screen(request).await?.into_inner();
    let mut ids = Vec::new();
    while let Some(response) = responses.next().await {
        if let Some(pb::screen_response::Kind::Verdict(v)) = response?.kind {
            ids.extend(v.alerts.into_iter().map(|a| a.alert_id));
        }
    }
    Ok(ids)
}

async fn subscribe(
    server: &TestServer,
    request: Request<pb::SubscribeRequest>,
) -> Result<Streaming<pb::AlertEvent>, Status> {
    Ok(server.alerts().await.subscribe(request).await?.into_inner())
}

/// The next event that is not a heartbeat.
async fn next_event(events: &mut Streaming<pb::AlertEvent>) -> pb::AlertEvent {
    loop {
        let event = tokio::time::timeout(PATIENCE, events.next())
            .await
            .expect("an event within the patience bound")
            .expect("stream open")
            .expect("event, not an error");
        if !matches!(event.kind, Some(Event::Heartbeat(_))) {
            return event;
        }
    }
}

/// The tenant an event is about.
fn tenant_of(event: &pb::AlertEvent) -> Option<&str> {
    Some(match event.kind.as_ref()? {
        Event::Alert(a) => &a.tenant_id,
        Event::Update(u) => &u.alert.as_ref()?.tenant_id,
        Event::Summary(s) => &s.tenant_id,
        Event::Acknowledgement(a) => &a.alert.as_ref()?.tenant_id,
        Event::Heartbeat(_) | Event::Gap(_) => return None,
    })
}

/// One HTTP/1.1 request to the console with optional headers; the status and the body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<&Value>,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect console");
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    let read = stream.read_to_string(&mut response);
    tokio::time::timeout(PATIENCE, read).await.expect("a refusal is immediate").expect("read");
    let status = response[9..12].parse().expect("status code");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// `message` with `token` as its bearer token, or with none.
fn with_token<T>(token: Option<&str>, message: T) -> Request<T> {
    match token {
        Some(token) => bearer(token, message),
        None => Request::new(message),
    }
}

/// Tallies the cases and names each failure.
#[derive(Default)]
struct Cases {
    run: usize,
}

impl Cases {
    fn code<T: std::fmt::Debug>(&mut self, what: &str, result: Result<T, Status>, want: Code) {
        self.run += 1;
        match result {
            Err(status) => assert_eq!(status.code(), want, "help: {what}: {status:?}"),
            Ok(value) => panic!("help: {what}: expected {want:?}, got a success {value:?}"),
        }
    }

    fn http(&mut self, what: &str, got: (u16, String), want: u16) {
        self.run += 1;
        assert_eq!(got.0, want, "help: {what}: {}", got.1);
        assert!(!got.1.contains("alert_id\":\"al-"), "help: {what} leaked an alert: {}", got.1);
    }
}

/// Tokens of tenant A, in every role, against every RPC and console endpoint about tenant B,
/// with filters naming B's tenant and conversations, B's alert ids and B's cursors: each is
/// PERMISSION_DENIED (403 on the console), never an empty stream; wrong roles on A's own
/// tenant are refused too; no token or a wrong one is UNAUTHENTICATED. Meanwhile A's own
/// streams, gRPC and console, receive not one of B's events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_a_never_reaches_tenant_b() {
    let mut config = shipped_config();
    let tokens = Tokens::install(
        &mut config,
        &[
            ("a-producer", Role::Producer, &[A]),
            ("a-supervisor", Role::Supervisor, &[A]),
            ("a-admin", Role::Admin, &[A]),
            ("b-producer", Role::Producer, &[B]),
            ("b-supervisor", Role::Supervisor, &[B]),
        ],
    );
    let server = start_server_with_console(config).await;
    let console = server.console.expect("console address");
    let mut cases = Cases::default();

    // A's watchers, open from the start: a supervisor and an admin over gRPC.
    let watch = |token: &str| {
        bearer(token, pb::SubscribeRequest { tenant_id: A.into(), ..Default::default() })
    };
    let mut a_watchers = vec![
        subscribe(&server, watch(tokens.get("a-supervisor"))).await.expect("A supervisor"),
        subscribe(&server, watch(tokens.get("a-admin"))).await.expect("A admin"),
    ];
    // B's own supervisor, to learn B's alert ids, conversation and cursors.
    let b_request = pb::SubscribeRequest { tenant_id: B.into(), ..Default::default() };
    let mut b_events =
        subscribe(&server, bearer(tokens.get("b-supervisor"), b_request)).await.expect("B");
    let b_alerts =
        screen(&server, tokens.get("b-producer"), B, "b-call-1").await.expect("B screens");
    assert!(!b_alerts.is_empty(), "help: B must raise alerts for the suite to mean anything");
    let b_event = next_event(&mut b_events).await;
    assert_eq!(tenant_of(&b_event), Some(B));
    let b_cursor = b_event.cursor.clone();

    // Producing as B.
    for name in A_TOKENS {
        let token = tokens.get(name);
        let result = screen(&server, token, B, "a-sends-as-b").await;
        cases.code(&format!("{name} Screen as B"), result, Code::PermissionDenied);
        let mut client = server.screening().await;
        let text = pb::ScreenTextRequest {
            tenant_id: B.into(),
            speaker: pb::Speaker::Customer.into(),
            text: "ぶっ殺すぞ".into(),
            ..Default::default()
        };
        let result = client.screen_text(bearer(token, text)).await;
        cases.code(&format!("{name} ScreenText as B"), result, Code::PermissionDenied);
    }

    // Reading B's stream, whatever the filter.
    let filters: Vec<(&str, pb::SubscribeRequest)> = vec![
        ("no filter", pb::SubscribeRequest::default()),
        (
            "B's conversation",
            pb::SubscribeRequest {
                conversation_ids: vec!["b-call-1".into()],
                ..Default::default()
            },
        ),
        ("B's cursor", pb::SubscribeRequest { cursor: b_cursor.clone(), ..Default::default() }),
        (
            "cursor 0 (replay all)",
            pb::SubscribeRequest { cursor: "0".into(), ..Default::default() },
        ),
        (
            "B's queue",
            pb::SubscribeRequest { queues: vec!["billing".into()], ..Default::default() },
        ),
        (
            "min severity",
            pb::SubscribeRequest { min_severity: pb::Severity::Low.into(), ..Default::default() },
        ),
        (
            "categories",
            pb::SubscribeRequest {
                categories: vec![pb::Category::Attack.into()],
                ..Default::default()
            },
        ),
    ];
    for name in A_TOKENS {
        for (what, filter) in &filters {
            let request = pb::SubscribeRequest { tenant_id: B.into(), ..filter.clone() };
            let result = subscribe(&server, bearer(tokens.get(name), request)).await;
            cases.code(&format!("{name} Subscribe B, {what}"), result, Code::PermissionDenied);
        }
    }

    // Acknowledging B's alerts and reading B's lexicon feedback.
    let mut alerts = server.alerts().await;
    for name in A_TOKENS {
        let token = tokens.get(name);
        for alert_id in &b_alerts {
            let request = pb::AcknowledgeRequest {
                tenant_id: B.into(),
                alert_id: alert_id.clone(),
                acknowledged_by: "intruder".into(),
                ..Default::default()
            };
            let result = alerts.acknowledge(bearer(token, request)).await;
            cases.code(&format!("{name} Acknowledge B's alert"), result, Code::PermissionDenied);
        }
        let request = pb::EntryStatsRequest { tenant_id: B.into() };
        let result = alerts.entry_stats(bearer(token, request)).await;
        cases.code(&format!("{name} EntryStats B"), result, Code::PermissionDenied);
    }
    // B's alert id under A's own tenant: not found, not acknowledged.
    for name in ["a-supervisor", "a-admin"] {
        let request = pb::AcknowledgeRequest {
            tenant_id: A.into(),
            alert_id: b_alerts[0].clone(),
            acknowledged_by: "intruder".into(),
            ..Default::default()
        };
        let result = alerts.acknowledge(bearer(tokens.get(name), request)).await;
        cases.code(&format!("{name} Acknowledge B's alert as A"), result, Code::NotFound);
    }

    // Wrong roles on A's own tenant.
    let a_subscribe = pb::SubscribeRequest { tenant_id: A.into(), ..Default::default() };
    let result = subscribe(&server, bearer(tokens.get("a-producer"), a_subscribe.clone())).await;
    cases.code("producer Subscribe A", result, Code::PermissionDenied);
    let ack = pb::AcknowledgeRequest {
        tenant_id: A.into(),
        alert_id: "al-x".into(),
        acknowledged_by: "p".into(),
        ..Default::default()
    };
    let result = alerts.acknowledge(bearer(tokens.get("a-producer"), ack.clone())).await;
    cases.code("producer Acknowledge A", result, Code::PermissionDenied);
    let stats = pb::EntryStatsRequest { tenant_id: A.into() };
    let result = alerts.entry_stats(bearer(tokens.get("a-producer"), stats.clone())).await;
    cases.code("producer EntryStats A", result, Code::PermissionDenied);
    let result = screen(&server, tokens.get("a-supervisor"), A, "sv-produces").await;
    cases.code("supervisor Screen A", result, Code::PermissionDenied);
    let text = pb::ScreenTextRequest {
        tenant_id: A.into(),
        speaker: pb::Speaker::Customer.into(),
        text: "x".into(),
        ..Default::default()
    };
    let mut screening = server.screening().await;
    let result = screening.screen_text(bearer(tokens.get("a-supervisor"), text.clone())).await;
    cases.code("supervisor ScreenText A", result, Code::PermissionDenied);
    // The admin RPC: only the admin role, and never without a token.
    let mut admin = AdminServiceClient::connect(server.endpoint()).await.expect("admin client");
    for name in ["a-producer", "a-supervisor"] {
        let result =
            admin.reload_lexicons(bearer(tokens.get(name), pb::ReloadLexiconsRequest {})).await;
        cases.code(&format!("{name} ReloadLexicons"), result, Code::PermissionDenied);
    }
    for (what, token) in [("no token", None), ("wrong token", Some("kg_not-a-token"))] {
        let result = admin.reload_lexicons(with_token(token, pb::ReloadLexiconsRequest {})).await;
        cases.code(&format!("{what} ReloadLexicons"), result, Code::Unauthenticated);
    }
    let reloaded =
        admin.reload_lexicons(bearer(tokens.get("a-admin"), pb::ReloadLexiconsRequest {})).await;
    assert!(reloaded.is_ok(), "help: the admin token may reload: {reloaded:?}");

    // No token, or a wrong one, on every RPC.
    for (what, token) in [("no token", None), ("wrong token", Some("kg_not-a-token"))] {
        let result = screening.screen_text(with_token(token, text.clone())).await;
        cases.code(&format!("{what} ScreenText"), result, Code::Unauthenticated);
        let stream = tokio_stream::iter(conversation(A, "anon"));
        let result = match token {
            Some(t) => screening.screen(bearer(t, stream)).await.map(drop),
            None => screening.screen(stream).await.map(drop),
        };
        cases.code(&format!("{what} Screen"), result, Code::Unauthenticated);
        let result = subscribe(&server, with_token(token, a_subscribe.clone())).await;
        cases.code(&format!("{what} Subscribe"), result, Code::Unauthenticated);
        let result = alerts.acknowledge(with_token(token, ack.clone())).await;
        cases.code(&format!("{what} Acknowledge"), result, Code::Unauthenticated);
        let result = alerts.entry_stats(with_token(token, stats.clone())).await;
        cases.code(&format!("{what} EntryStats"), result, Code::Unauthenticated);
    }

    // The console: the same rules over HTTP.
    let b_conv = "conversation_ids=b-call-1";
    for name in A_TOKENS {
        let token = tokens.get(name);
        let header = format!("Authorization: Bearer {token}\r\n");
        for query in ["", b_conv, &format!("cursor={b_cursor}")] {
            let path = format!("/api/events?tenant_id={B}&access_token={token}&{query}");
            let got = http(console, "GET", &path, "", None).await;
            cases.http(&format!("{name} console events B {query}"), got, 403);
            let path = format!("/api/events?tenant_id={B}&{query}");
            let got = http(console, "GET", &path, &header, None).await;
            cases.http(&format!("{name} console events B (header) {query}"), got, 403);
        }
        let ack = json!({"tenant_id": B, "alert_id": b_alerts[0], "acknowledged_by": "intruder"});
        let got = http(console, "POST", "/api/acknowledge", &header, Some(&ack)).await;
        cases.http(&format!("{name} console acknowledge B"), got, 403);
        let got =
            http(console, "GET", &format!("/api/entry-stats?tenant_id={B}"), &header, None).await;
        cases.http(&format!("{name} console entry-stats B"), got, 403);
    }
    let producer = format!("Authorization: Bearer {}\r\n", tokens.get("a-producer"));
    let got = http(console, "GET", &format!("/api/events?tenant_id={A}"), &producer, None).await;
    cases.http("producer console events A", got, 403);
    for (what, header) in
        [("no token", String::new()), ("wrong token", "Authorization: Bearer kg_x\r\n".into())]
    {
        let got = http(console, "GET", &format!("/api/events?tenant_id={A}"), &header, None).await;
        cases.http(&format!("{what} console events"), got, 401);
        let ack = json!({"tenant_id": A, "alert_id": "al-x", "acknowledged_by": "s"});
        let got = http(console, "POST", "/api/acknowledge", &header, Some(&ack)).await;
        cases.http(&format!("{what} console acknowledge"), got, 401);
        let got =
            http(console, "GET", &format!("/api/entry-stats?tenant_id={A}"), &header, None).await;
        cases.http(&format!("{what} console entry-stats"), got, 401);
    }

    // A's own streams, filtered by B's conversation or resumed from B's cursor, are allowed
    // (they are A's) but must carry nothing of B's.
    let by_b_conversation = pb::SubscribeRequest {
        tenant_id: A.into(),
        conversation_ids: vec!["b-call-1".into(), "a-call-1".into()],
        ..Default::default()
    };
    a_watchers.push(
        subscribe(&server, bearer(tokens.get("a-supervisor"), by_b_conversation))
            .await
            .expect("A filter"),
    );
    let from_b_cursor = pb::SubscribeRequest {
        tenant_id: A.into(),
        cursor: b_cursor.clone(),
        ..Default::default()
    };
    match subscribe(&server, bearer(tokens.get("a-supervisor"), from_b_cursor)).await {
        Ok(stream) => a_watchers.push(stream),
        // B's cursor may be ahead of A's stream: refused as a bad cursor, which leaks nothing.
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "help: {status:?}"),
    }
    let replay_all =
        pb::SubscribeRequest { tenant_id: A.into(), cursor: "0".into(), ..Default::default() };
    a_watchers.push(
        subscribe(&server, bearer(tokens.get("a-admin"), replay_all)).await.expect("A replay"),
    );
    // The A console stream, read as raw server-sent events.
    let mut a_console = TcpStream::connect(console).await.expect("connect console");
    let path =
        format!("/api/events?tenant_id={A}&cursor=0&access_token={}", tokens.get("a-supervisor"));
    a_console
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {console}\r\n\r\n").as_bytes())
        .await
        .expect("request the A event stream");

    // B keeps producing; then A raises one alert, the marker that ends each A stream's read.
    assert!(!screen(&server, tokens.get("b-producer"), B, "b-call-2").await.expect("B").is_empty());
    let a_alerts =
        screen(&server, tokens.get("a-producer"), A, "a-call-1").await.expect("A screens");
    let marker = a_alerts.first().expect("A raised an alert").clone();

    let mut a_events = 0;
    let mut leaks = 0;
    for watcher in &mut a_watchers {
        loop {
            let event = next_event(watcher).await;
            a_events += 1;
            if tenant_of(&event).is_some_and(|t| t != A) {
                leaks += 1;
            }
            if matches!(&event.kind, Some(Event::Alert(a)) if a.alert_id == marker) {
                break;
            }
        }
    }
    let mut sse = String::new();
    let read_console = async {
        let mut buf = [0u8; 4096];
        while !sse.contains(&marker) {
            let n = a_console.read(&mut buf).await.expect("read the A event stream");
            assert!(n > 0, "help: the A event stream closed early");
            sse.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    };
    tokio::time::timeout(PATIENCE, read_console).await.expect("the marker reaches the A console");
    assert!(sse.starts_with("HTTP/1.1 200"), "help: {sse}");
    leaks += sse.matches(&format!("\"tenant_id\":\"{B}\"")).count();
    leaks += b_alerts.iter().filter(|id| sse.contains(id.as_str())).count();

    eprintln!(
        "isolation: {} cases, {leaks} leaks ({a_events} events read on A's streams)",
        cases.run
    );
    assert_eq!(leaks, 0, "help: B's events reached A");
    assert!(a_events >= a_watchers.len(), "help: every A stream read up to the marker");
    // Per A token: 2 produce, 7 subscribe filters, one ack per B alert, 1 stats; then 2
    // NOT_FOUND acks, 5 wrong roles, 2 refused and 2 unauthenticated reloads, 2 x 5
    // unauthenticated RPCs, 3 x 8 console refusals, 1 producer on the console and 2 x 3
    // unauthenticated console calls. A loop that silently ran short would change the count.
    let expected = 3 * (2 + 7 + b_alerts.len() + 1) + 2 + 5 + 4 + 10 + 24 + 1 + 6;
    assert_eq!(cases.run, expected, "help: the suite ran short");
    server.stop().await.expect("clean stop");
}
