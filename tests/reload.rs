//! Hot reload: a conversation streams without a pause while a lexicon entry is added and the
//! rules are reloaded, by RPC in-process and by SIGHUP to a real child process; no segment is
//! dropped or refused and the new entry alerts afterwards. A broken file keeps the old rules
//! and names every problem's file:line.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kasuhara_guard::pb;
use kasuhara_guard::pb::admin_service_client::AdminServiceClient;
use kasuhara_guard::pb::screening_service_client::ScreeningServiceClient;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

use crate::util::{shipped_config, start_server};

/// The entry the tests add: a made-up insult no shipped entry matches.
const NEW_ID: &str = "reload.test.chikuwa";
const NEW_TEXT: &str = "このちくわ大明神め";
const NEW_FILE: &str = "reload-test.tsv";
const NEW_LINE: &str =
    "reload.test.chikuwa\tATTACK\tHIGH\tinsult-reload\tちくわ大明神\t-\tadded by the reload test\n";

/// A copy of the shipped lexicon in a fresh temp directory the test may change.
fn lexicon_copy(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kasuhara-reload-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("dictionaries"), &dir);
    dir
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create lexicon copy");
    for entry in std::fs::read_dir(from).expect("read lexicon dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy lexicon file");
        }
    }
}

/// What one streamed conversation saw.
struct Streamed {
    /// Seqs of the verdicts, in arrival order.
    verdicts: Vec<u64>,
    /// Seq of the first verdict alerting with the new entry.
    first_new_alert: Option<u64>,
    /// Segments sent before the reload was triggered: none of them may alert with it.
    sent_before_trigger: u64,
    summary: bool,
}

/// Streams one conversation of `NEW_TEXT` segments every `pace`; after 20 verdicts runs
/// `trigger` (which adds the entry and reloads) while segments keep flowing, then keeps
/// streaming until the new entry alerts (or 60 s pass) and ends the conversation.
async fn stream_through_reload<F>(
    mut client: ScreeningServiceClient<Channel>,
    id: &str,
    pace: Duration,
    trigger: F,
) -> Streamed
where
    F: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<pb::ScreenRequest>(64);
    let start = pb::ConversationStart {
        conversation_id: id.into(),
        tenant_id: "reload-tenant".into(),
        channel: pb::Channel::Voice.into(),
        ..Default::default()
    };
    let kind = pb::screen_request::Kind::Start(start);
    tx.send(pb::ScreenRequest { kind: Some(kind) }).await.expect("queue start");
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let producer = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        tokio::spawn(async move {
            let mut seq = 0u64;
            while !stop.load(Ordering::SeqCst) {
                seq += 1;
                let segment = pb::Segment {
                    seq,
                    speaker: pb::Speaker::Customer.into(),
                    text: NEW_TEXT.into(),
                    is_final: true,
                    start_ms: seq * 1000,
                    end_ms: seq * 1000 + 900,
                };
                let kind = pb::screen_request::Kind::Segment(segment);
                if tx.send(pb::ScreenRequest { kind: Some(kind) }).await.is_err() {
                    return;
                }
                sent.store(seq, Ordering::SeqCst);
                tokio::time::sleep(pace).await;
            }
            let end = pb::screen_request::Kind::End(pb::ConversationEnd::default());
            let _ = tx.send(pb::ScreenRequest { kind: Some(end) }).await;
        })
    };
    let mut responses =
        client.screen(ReceiverStream::new(rx)).await.expect("open Screen stream").into_inner();
    let mut streamed = Streamed {
        verdicts: Vec::new(),
        first_new_alert: None,
        sent_before_trigger: 0,
        summary: false,
    };
    let mut trigger = Some(trigger);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Some(response) = responses.next().await {
        let response = response.expect("no segment is refused during a reload");
        match response.kind.expect("response kind") {
            pb::screen_response::Kind::Verdict(verdict) => {
                let new =
                    verdict.alerts.iter().flat_map(|a| &a.evidence).any(|e| e.entry_id == NEW_ID);
                if new && streamed.first_new_alert.is_none() {
                    streamed.first_new_alert = Some(verdict.seq);
                    stop.store(true, Ordering::SeqCst);
                }
                streamed.verdicts.push(verdict.seq);
                if streamed.verdicts.len() == 20
                    && let Some(trigger) = trigger.take()
                {
                    streamed.sent_before_trigger = sent.load(Ordering::SeqCst);
                    tokio::spawn(trigger);
                }
                if tokio::time::Instant::now() > deadline {
                    stop.store(true, Ordering::SeqCst);
                }
            }
            pb::screen_response::Kind::Summary(_) => streamed.summary = true,
            pb::screen_response::Kind::Update(_) => {}
        }
    }
    producer.await.expect("producer task");
    streamed
}

/// Every segment sent got exactly one verdict, in order, and the new entry alerted only after
/// the reload was triggered.
fn assert_no_gap(streamed: &Streamed) {
    let expected: Vec<u64> = (1..=streamed.verdicts.len() as u64).collect();
    assert_eq!(streamed.verdicts, expected, "help: one verdict per segment, none dropped");
    assert!(streamed.summary, "help: the conversation ends with its summary");
    let first = streamed.first_new_alert.expect("the new entry alerts after the reload");
    assert!(
        first > streamed.sent_before_trigger,
        "help: alerted at seq {first}, before the reload was triggered (after seq {})",
        streamed.sent_before_trigger
    );
}

async fn reload(endpoint: &str) -> Result<pb::ReloadLexiconsResponse, tonic::Status> {
    let mut admin = AdminServiceClient::connect(endpoint.to_owned()).await.expect("connect admin");
    admin.reload_lexicons(pb::ReloadLexiconsRequest {}).await.map(tonic::Response::into_inner)
}

/// Reload by RPC while a conversation streams; then a broken file is refused with every
/// problem located, and the rules in use (with the new entry) stay.
#[tokio::test]
async fn reload_by_rpc_keeps_streams_going_and_refuses_broken_files() {
    let dir = lexicon_copy("rpc");
    let mut config = shipped_config();
    config.lexicon_dir = dir.clone();
    config.limits.max_segments_per_second = 10_000;
    let server = start_server(config).await;
    let endpoint = server.endpoint();
    let before = reload(&endpoint).await.expect("reloading the unchanged lexicon works");
    assert_eq!(before.generation, 1);

    let trigger = {
        let (dir, endpoint) = (dir.clone(), endpoint.clone());
        async move {
            std::fs::write(dir.join(NEW_FILE), NEW_LINE).expect("add the entry");
            let after = reload(&endpoint).await.expect("the reload succeeds");
            assert_eq!(after.entries, before.entries + 1, "help: one entry added");
            assert_eq!(after.generation, 2);
            assert!(after.elapsed.is_some());
        }
    };
    let streamed = stream_through_reload(
        server.screening().await,
        "reload-rpc",
        Duration::from_millis(5),
        trigger,
    )
    .await;
    assert_no_gap(&streamed);

    // Two broken lines in one file, one in another: all three reported, nothing swapped.
    std::fs::write(
        dir.join("broken-a.tsv"),
        "# comment\nbad.one\tATTACK\n\nbad.two\tNOPE\tHIGH\tf\tx\t-\tr\n",
    )
    .expect("write broken file");
    std::fs::write(dir.join("broken-b.tsv"), "bad.three\n").expect("write broken file");
    let status = reload(&endpoint).await.expect_err("a broken lexicon is refused");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let details = status.get_error_details();
    let violations = &details.precondition_failure().expect("precondition details").violations;
    let subjects: Vec<&str> = violations.iter().map(|v| v.subject.as_str()).collect();
    for want in ["broken-a.tsv:2", "broken-a.tsv:4", "broken-b.tsv:1"] {
        assert!(subjects.iter().any(|s| s.ends_with(want)), "help: {want} missing in {subjects:?}");
    }
    assert!(violations.iter().all(|v| v.r#type == "LEXICON"));
    assert!(status.message().contains("broken-a.tsv:2"), "{}", status.message());

    // The rules in use are the last good ones: the new entry still alerts.
    let mut client = server.screening().await;
    let response = client
        .screen_text(pb::ScreenTextRequest {
            tenant_id: "reload-tenant".into(),
            channel: pb::Channel::Chat.into(),
            speaker: pb::Speaker::Customer.into(),
            text: NEW_TEXT.into(),
        })
        .await
        .expect("screening continues after a failed reload")
        .into_inner();
    assert!(response.alerts.iter().flat_map(|a| &a.evidence).any(|e| e.entry_id == NEW_ID));
    server.stop().await.expect("clean stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// A broken policy file is refused with its file:line, the lexicon swap is not half done.
#[tokio::test]
async fn broken_policy_file_is_refused_with_its_line() {
    let dir = lexicon_copy("policy");
    let policy = dir.join("policy.toml");
    std::fs::write(&policy, "[default]\ncooldown = \"30s\"\n").expect("write policy");
    let mut config = shipped_config();
    config.lexicon_dir = dir.clone();
    config.policy = kasuhara_guard::config::PolicySet::load(&policy).expect("policy loads");
    config.policy_file = Some(policy.clone());
    let server = start_server(config).await;
    let endpoint = server.endpoint();
    let ok = reload(&endpoint).await.expect("the good policy reloads");
    std::fs::write(&policy, "[default]\ncooldown = \"30s\"\npersistence_repeats = \"many\"\n")
        .expect("break policy");
    std::fs::write(dir.join(NEW_FILE), NEW_LINE).expect("add the entry");
    let status = reload(&endpoint).await.expect_err("a broken policy is refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    let details = status.get_error_details();
    let violation = &details.precondition_failure().expect("details").violations[0];
    assert_eq!(violation.r#type, "POLICY");
    assert!(violation.subject.ends_with("policy.toml:3"), "{violation:?}");
    // Nothing of that reload is in use: the entry added beside the broken policy is not.
    let mut client = server.screening().await;
    let response = client
        .screen_text(pb::ScreenTextRequest {
            tenant_id: "t".into(),
            channel: pb::Channel::Chat.into(),
            speaker: pb::Speaker::Customer.into(),
            text: NEW_TEXT.into(),
        })
        .await
        .expect("screen")
        .into_inner();
    assert!(response.alerts.is_empty(), "help: the failed reload must not swap the lexicon");
    std::fs::write(&policy, "[default]\ncooldown = \"30s\"\n").expect("fix policy");
    let fixed = reload(&endpoint).await.expect("the fixed files reload");
    assert_eq!(fixed.entries, ok.entries + 1);
    server.stop().await.expect("clean stop");
    let _ = std::fs::remove_dir_all(dir);
}

/// Kills the child when the test ends, however it ends.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// SIGHUP to a real `kasuhara-guard serve` process reloads while a conversation streams.
#[tokio::test]
async fn sighup_reloads_a_running_process() {
    let dir = lexicon_copy("sighup");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_kasuhara-guard"));
    for (name, _) in std::env::vars() {
        if name.starts_with("KASUHARA_") {
            command.env_remove(name);
        }
    }
    let child = command
        .args(["serve", "--addr", &addr, "--metrics-addr", "off", "--lexicon-dir"])
        .arg(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kasuhara-guard serve");
    let pid = child.id();
    let _child = ChildGuard(child);
    let endpoint = format!("http://{addr}");
    let client = connect_when_serving(&endpoint).await;

    let trigger = {
        let dir = dir.clone();
        async move {
            std::fs::write(dir.join(NEW_FILE), NEW_LINE).expect("add the entry");
            let status =
                Command::new("kill").args(["-HUP", &pid.to_string()]).status().expect("run kill");
            assert!(status.success(), "help: kill -HUP {pid}");
        }
    };
    // Under the default 50 segments/s per conversation.
    let streamed =
        stream_through_reload(client, "reload-sighup", Duration::from_millis(30), trigger).await;
    assert_no_gap(&streamed);
    let _ = std::fs::remove_dir_all(dir);
}

/// A client once the child answers a ScreenText (the lexicon is loaded).
async fn connect_when_serving(endpoint: &str) -> ScreeningServiceClient<Channel> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut client) = ScreeningServiceClient::connect(endpoint.to_owned()).await {
            let probe = pb::ScreenTextRequest {
                tenant_id: "probe".into(),
                channel: pb::Channel::Chat.into(),
                speaker: pb::Speaker::Customer.into(),
                text: "こんにちは".into(),
            };
            if client.screen_text(probe).await.is_ok() {
                return client;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "help: the child never started serving");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
