use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use kasuhara_guard::pb::{self, alert_event::Kind as Event, screen_request::Kind};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_stream::StreamExt;

use kasuhara_guard::auth::Role;

use crate::util::{Tokens, bearer, shipped_config, start_server_with_console};

/// Set to 1 to skip the browser test on a machine without Chromium; CI never sets it.
const SKIP_BROWSER: &str = "KASUHARA_SKIP_BROWSER_TEST";
/// Generous bound for something already on its way; only a hang trips it.
const PATIENCE: Duration = Duration::from_secs(20);

/// One HTTP/1.1 request to the console; returns the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.expect("connect console");
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response[9..12].parse().expect("status code");
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

fn abusive_conversation(tenant: &str, id: &str) -> Vec<pb::ScreenRequest> {
    vec![
        pb::ScreenRequest {
            kind: Some(Kind::Start(pb::ConversationStart {
                conversation_id: id.into(),
                tenant_id: tenant.into(),
                queue: "billing".into(),
                agent_id: "agent-7".into(),
                ..Default::default()
            })),
        },
        pb::ScreenRequest {
            kind: Some(Kind::Segment(pb::Segment {
                seq: 1,
                speaker: pb::Speaker::Customer.into(),
                text: "請求がおかしいだろ、おいてめえぶっ殺すぞ".into(),
                is_final: true,
                start_ms: 0,
                end_ms: 2000,
            })),
        },
    ]
}

/// The page and its assets are served from the binary; the JSON API validates like gRPC
/// (400 with the field, 404 for an unknown alert).
#[tokio::test]
async fn console_serves_page_and_validates_requests() {
    let server = start_server_with_console(shipped_config()).await;
    let console = server.console.expect("console address");
    let (status, page) = http(console, "GET", "/", None).await;
    assert_eq!(status, 200);
    assert!(page.contains("<html lang=\"ja\">") && page.contains("カスハラ監視コンソール"));
    for asset in ["/console.js", "/console.css"] {
        let (status, body) = http(console, "GET", asset, None).await;
        assert_eq!(status, 200, "help: {asset}");
        assert!(body.len() > 500, "help: {asset} is served whole");
    }
    let (status, body) = http(console, "GET", "/api/events", None).await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["field"], "tenant_id");
    let (status, body) =
        http(console, "GET", "/api/events?tenant_id=t&min_severity=HUGE", None).await;
    assert_eq!(status, 400, "help: {body}");
    let (status, body) = http(console, "GET", "/api/entry-stats", None).await;
    assert_eq!(status, 400, "help: {body}");
    let (status, body) =
        http(console, "POST", "/api/acknowledge", Some(&json!({"tenant_id": "t"}))).await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["field"], "alert_id");
    let unknown = json!({"tenant_id": "t", "alert_id": "al-x", "acknowledged_by": "s"});
    let (status, _) = http(console, "POST", "/api/acknowledge", Some(&unknown)).await;
    assert_eq!(status, 404);
    let bad_outcome = json!({"tenant_id": "t", "alert_id": "al-x", "acknowledged_by": "s",
                             "outcome": "SHRUG"});
    let (status, body) = http(console, "POST", "/api/acknowledge", Some(&bad_outcome)).await;
    assert_eq!(status, 400);
    assert_eq!(serde_json::from_str::<Value>(&body).expect("json")["field"], "outcome");
    server.stop().await.expect("clean stop");
}

/// Kills the WebDriver process when the test ends, however it ends.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn find_program(candidates: &[&str]) -> Option<String> {
    candidates.iter().find_map(|name| {
        let out = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_owned();
        (out.status.success() && !path.is_empty()).then_some(path)
    })
}

/// Starts chromedriver on a free loopback port and opens a headless Chromium session.
async fn open_browser() -> Option<(Driver, Client)> {
    let skip = std::env::var(SKIP_BROWSER).is_ok_and(|v| v == "1");
    let driver = find_program(&["chromedriver"]);
    let chromium = find_program(&["chromium", "chromium-browser", "google-chrome"]);
    let (Some(driver), Some(chromium)) = (driver, chromium) else {
        assert!(
            skip,
            "help: the browser test needs Debian's chromium and chromium-driver \
             (apt-get install -y chromium chromium-driver); set {SKIP_BROWSER}=1 to skip it"
        );
        eprintln!("skipping the browser test: {SKIP_BROWSER}=1 and no chromium");
        return None;
    };
    if skip {
        eprintln!("skipping the browser test: {SKIP_BROWSER}=1");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = Command::new(driver)
        .arg(format!("--port={port}"))
        .arg("--allowed-ips=127.0.0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver(child);
    // chromedriver takes a moment to listen; wait for its port, bounded.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listening = async {
        while TcpStream::connect(addr).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(PATIENCE, listening).await.expect("chromedriver listens");
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000", "--lang=ja-JP"],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://{addr}"))
        .await
        .expect("open a Chromium session");
    Some((driver, client))
}

/// End to end in a real headless Chromium: the console shows an alert raised over gRPC live,
/// with its quote highlighted in context; acknowledging it as a false alarm in the page
/// reaches a gRPC subscriber and the entry's false-alarm count; the conversation view draws
/// the risk score; and a screenshot of the page is saved under target/. Authentication is on:
/// the page connects only once the supervisor's token is entered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_shows_alert_live_and_acknowledges_it() {
    let Some((_driver, browser)) = open_browser().await else { return };
    let mut config = shipped_config();
    let tokens = Tokens::install(
        &mut config,
        &[("sv", Role::Supervisor, &["floor-1"]), ("ivr", Role::Producer, &["floor-1"])],
    );
    let server = start_server_with_console(config).await;
    let console = server.console.expect("console address");
    let subscribe = pb::SubscribeRequest { tenant_id: "floor-1".into(), ..Default::default() };
    let mut grpc_supervisor = server
        .alerts()
        .await
        .subscribe(bearer(tokens.get("sv"), subscribe))
        .await
        .expect("subscribe")
        .into_inner();

    browser
        .goto(&format!("http://{console}/?tenant=floor-1&supervisor=sv-browser"))
        .await
        .expect("open the console");
    let wait = || browser.wait().at_most(PATIENCE);
    wait()
        .for_element(Locator::Css("#connection[data-state='error']"))
        .await
        .expect("without a token the event stream is refused");
    browser
        .find(Locator::Css("#token"))
        .await
        .expect("token field")
        .send_keys(tokens.get("sv"))
        .await
        .expect("type the token");
    browser.find(Locator::Css("#apply")).await.expect("apply").click().await.expect("click");
    wait()
        .for_element(Locator::Css("#connection[data-state='open']"))
        .await
        .expect("the page connects to the event stream");

    let mut producer = server.screening().await;
    let conversation = tokio_stream::iter(abusive_conversation("floor-1", "call-42"));
    let responses: Vec<_> = producer
        .screen(bearer(tokens.get("ivr"), conversation))
        .await
        .expect("screen")
        .into_inner()
        .collect()
        .await;
    assert!(responses.iter().all(Result::is_ok));

    let card = wait()
        .for_element(Locator::Css("li.alert.sev-CRITICAL[data-alert-id]"))
        .await
        .expect("the alert appears live");
    let alert_id = card.attr("data-alert-id").await.expect("attr").expect("alert id");
    let text = card.text().await.expect("card text");
    assert!(text.contains("身体的・精神的な攻撃"), "help: category label: {text}");
    assert!(text.contains("重大"), "help: severity label: {text}");
    assert!(text.contains("請求がおかしいだろ"), "help: the quote's context: {text}");
    let mark = card.find(Locator::Css(".evidence mark")).await.expect("highlight");
    let marked = mark.text().await.expect("mark");
    assert!(marked.starts_with("ぶっ殺す"), "help: the matched words are marked: {marked}");

    card.find(Locator::Css("select.outcome"))
        .await
        .expect("outcome")
        .select_by_value("FALSE_ALARM")
        .await
        .expect("choose false alarm");
    card.find(Locator::Css("input.note"))
        .await
        .expect("note")
        .send_keys("テスト通話")
        .await
        .expect("type note");
    card.find(Locator::Css("button.ack-button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("click");

    // The acknowledgement reaches the gRPC subscriber (after the alert and the summary).
    let acknowledgement = loop {
        let event = tokio::time::timeout(PATIENCE, grpc_supervisor.next())
            .await
            .expect("an event")
            .expect("open")
            .expect("ok");
        if let Some(Event::Acknowledgement(a)) = event.kind {
            break a;
        }
    };
    assert_eq!(acknowledgement.alert.expect("alert").alert_id, alert_id);
    assert_eq!(acknowledgement.outcome, pb::AckOutcome::FalseAlarm as i32);
    assert_eq!(acknowledgement.acknowledged_by, "sv-browser");
    assert_eq!(acknowledgement.note, "テスト通話");
    wait()
        .for_element(Locator::Css(&format!(
            "li.alert[data-alert-id='{alert_id}'][data-acknowledged='FALSE_ALARM']"
        )))
        .await
        .expect("the page shows the acknowledgement");
    wait()
        .for_element(Locator::Css("#entry-stats tr.misfiring"))
        .await
        .expect("the misfiring entry is listed");

    card.find(Locator::Css("button.conversation"))
        .await
        .expect("link")
        .click()
        .await
        .expect("open");
    wait()
        .for_element(Locator::Css("#conversation-panel:not([hidden]) #risk-chart circle"))
        .await
        .expect("the conversation view draws the risk score");

    let png = browser.screenshot().await.expect("screenshot");
    assert!(png.len() > 10_000, "help: a blank page compresses to almost nothing");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshot.png");
    std::fs::write(&path, &png).expect("save screenshot");
    println!("screenshot: {}", path.display());

    browser.close().await.expect("close the browser");
    server.stop().await.expect("clean stop");
}
