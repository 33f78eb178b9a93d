//! The evidence log: an append-only, hash-chained JSON Lines file of alerts (raised and
//! updated) and supervisors' acknowledgements, for incident reports that may go to a lawyer or
//! the police. `kasuhara-guard audit verify` checks the chain, `audit export` writes a report.
//!
//! ```text
//! AlertHub::publish ──try_send (never waits)──▶ bounded channel ──▶ writer thread
//!                     full: counted, dropped                        append line, fsync policy
//! ```
//!
//! One record per line. Each carries `seq` (1, 2, 3, … in the file), `prev` (the previous
//! record's `hash`; 64 zeros for the first) and, last, `hash`: the SHA-256 of the line's text
//! up to `,"hash":` with the closing brace. An edited record no longer matches its hash; a
//! removed, inserted or reordered one breaks `seq` and `prev`. Someone able to rewrite the
//! whole tail with fresh hashes, or to cut the last records, is not caught by the file alone:
//! anchor it by copying `audit verify`'s last hash elsewhere (a ticket, a second host).
//!
//! Evidence is written as supervisors saw it: masked by the tenant's personal-data rules.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use crate::alert::{Alert, AlertStatus, HubEvent};
use crate::telemetry;

/// Records the channel holds while the writer is behind (a slow disk); past it records are
/// counted as dropped rather than slowing screening. Minutes of alerts at a busy floor's rate.
pub const CHANNEL_CAPACITY: usize = 65_536;

/// `prev` of the first record.
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The marker that starts the hash at the end of every line.
const HASH_MARKER: &str = ",\"hash\":\"";

/// When the writer forces records to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// After every record: nothing acknowledged is lost to a power cut; one disk flush each.
    #[default]
    Always,
    /// At the first record after this much time since the last flush (and when the log
    /// closes): at most that much is lost to a power cut.
    Interval(Duration),
    /// Left to the operating system.
    Never,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "always" => Ok(FsyncPolicy::Always),
            "never" => Ok(FsyncPolicy::Never),
            other => crate::config::parse_duration(other)
                .ok()
                .filter(|d| !d.is_zero())
                .map(FsyncPolicy::Interval)
                .ok_or_else(|| {
                    format!("{other:?} is not \"always\", \"never\" or an interval like \"1s\"")
                }),
        }
    }
}

impl std::fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::Interval(every) => f.write_str(&crate::config::format_duration(*every)),
        }
    }
}

/// Where the evidence log goes and how it is flushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvidenceLogConfig {
    /// The JSON Lines file; appended to, created when missing.
    pub path: PathBuf,
    /// When records are forced to disk.
    pub fsync: FsyncPolicy,
}

/// One line of the log, without its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Position in the file, from 1.
    pub seq: u64,
    /// When the record was written, Unix ms.
    pub recorded_at_ms: u64,
    /// `alert`, `alert_update` or `acknowledgement`.
    pub kind: String,
    /// The alert (for an acknowledgement, as it stood when acknowledged).
    pub alert: AlertRecord,
    /// The acknowledgement, for `acknowledgement` records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledgement: Option<AckRecord>,
    /// The previous record's hash.
    pub prev: String,
}

/// An alert as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// The alert id.
    pub alert_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The conversation (empty for a lone text).
    pub conversation_id: String,
    /// The queue.
    pub queue: String,
    /// The agent on the call.
    pub agent_id: String,
    /// The segment that raised it.
    pub segment_seq: u64,
    /// Category code (e.g. `ATTACK`).
    pub category: String,
    /// Severity code.
    pub severity: String,
    /// `CONFIRMED`, `PROVISIONAL` or `RETRACTED`.
    pub status: String,
    /// When it was raised, Unix ms.
    pub created_at_ms: u64,
    /// The alert this one escalates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_alert_id: Option<String>,
    /// The conversation's risk score after it.
    pub risk_score: f64,
    /// The words behind it.
    pub evidence: Vec<EvidenceRecord>,
}

/// One quoted span.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvidenceRecord {
    /// The words, as said (personal data masked per the tenant's policy).
    pub quote: String,
    /// The words around them.
    pub context: String,
    /// The lexicon entry that matched.
    pub entry_id: String,
    /// Why it matched.
    pub reason: String,
}

/// An acknowledgement as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckRecord {
    /// Who.
    pub acknowledged_by: String,
    /// When, Unix ms.
    pub acknowledged_at_ms: u64,
    /// Outcome code (e.g. `ESCALATED`).
    pub outcome: String,
    /// The supervisor's note.
    pub note: String,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl AlertRecord {
    fn new(alert: &Alert) -> Self {
        Self {
            alert_id: alert.alert_id.clone(),
            tenant_id: alert.tenant_id.clone(),
            conversation_id: alert.conversation_id.clone(),
            queue: alert.queue.clone(),
            agent_id: alert.agent_id.clone(),
            segment_seq: alert.seq,
            category: alert.category.code().to_owned(),
            severity: alert.severity.code().to_owned(),
            status: match alert.status {
                AlertStatus::Confirmed => "CONFIRMED",
                AlertStatus::Provisional => "PROVISIONAL",
                AlertStatus::Retracted => "RETRACTED",
            }
            .to_owned(),
            created_at_ms: unix_ms(alert.created_at),
            previous_alert_id: alert.previous_alert_id.clone(),
            risk_score: alert.risk_score,
            evidence: alert
                .evidence
                .iter()
                .map(|e| EvidenceRecord {
                    quote: e.quote.clone(),
                    context: e.context.clone(),
                    entry_id: e.entry_id.clone(),
                    reason: e.reason.clone(),
                })
                .collect(),
        }
    }
}

/// The recordable part of a hub event: alerts and acknowledgements (summaries are not).
fn record_of(event: &HubEvent) -> Option<(&'static str, AlertRecord, Option<AckRecord>)> {
    match event {
        HubEvent::Alert(alert) => Some(("alert", AlertRecord::new(alert), None)),
        HubEvent::Update(alert, _) => Some(("alert_update", AlertRecord::new(alert), None)),
        HubEvent::Acknowledged(ack) => Some((
            "acknowledgement",
            AlertRecord::new(&ack.alert),
            Some(AckRecord {
                acknowledged_by: ack.acknowledged_by.clone(),
                acknowledged_at_ms: unix_ms(ack.acknowledged_at),
                outcome: ack.outcome.code().to_owned(),
                note: ack.note.clone(),
            }),
        )),
        HubEvent::Summary(_) => None,
    }
}

/// The line for `record`: its JSON with the hash of that JSON appended as the last field.
fn seal(record: &Record) -> (String, String) {
    // A struct of strings and numbers always serialises.
    let body = serde_json::to_string(record).unwrap_or_default();
    let hash = hex(&Sha256::digest(body.as_bytes()));
    let mut line = body;
    line.pop(); // the closing brace, put back after the hash
    let _ = write!(line, "{HASH_MARKER}{hash}\"}}");
    (line, hash)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The sending side, held by the alert hub; cheap to clone.
#[derive(Debug, Clone)]
pub struct EvidenceLog {
    tx: mpsc::Sender<HubEvent>,
}

impl EvidenceLog {
    /// Opens (or creates) the log and starts its writer thread, continuing the chain from the
    /// file's last record.
    ///
    /// # Errors
    /// The file cannot be opened, or its last line is not a record (the chain cannot go on;
    /// run `audit verify` on it).
    pub fn open(config: &EvidenceLogConfig) -> Result<EvidenceLog, EvidenceError> {
        let existing = match std::fs::read_to_string(&config.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(EvidenceError::Io { path: config.path.clone(), source }),
        };
        let (last_seq, last_hash) = match existing.lines().enumerate().last() {
            None => (0, GENESIS.to_owned()),
            Some((index, line)) => {
                let (record, hash) = parse_line(line).map_err(|reason| EvidenceError::Damaged {
                    path: config.path.clone(),
                    line: index + 1,
                    reason,
                })?;
                (record.seq, hash)
            }
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.path)
            .map_err(|source| EvidenceError::Io { path: config.path.clone(), source })?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let writer = Writer { file, fsync: config.fsync, seq: last_seq, prev: last_hash };
        std::thread::Builder::new()
            .name("evidence-log".into())
            .spawn(move || writer.run(rx))
            .map_err(|source| EvidenceError::Io { path: config.path.clone(), source })?;
        Ok(EvidenceLog { tx })
    }

    /// Queues `event` for the log if it is an alert or an acknowledgement; never waits. A full
    /// channel (the disk is behind) or a stopped writer drops it and counts it.
    pub fn record(&self, event: &HubEvent) {
        if matches!(event, HubEvent::Summary(_)) {
            return;
        }
        if self.tx.try_send(event.clone()).is_err() {
            telemetry::evidence_dropped();
        }
    }
}

/// Why the evidence log cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EvidenceError {
    /// The file could not be read or opened.
    #[error("cannot open the evidence log {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The last line is not a record, so the chain cannot continue.
    #[error("the evidence log {path} is damaged at line {line}: {reason}")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// The bad line, from 1.
        line: usize,
        /// What is wrong.
        reason: String,
    },
}

struct Writer {
    file: File,
    fsync: FsyncPolicy,
    seq: u64,
    prev: String,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<HubEvent>) {
        let mut last_sync = Instant::now();
        while let Some(event) = rx.blocking_recv() {
            let Some((kind, alert, acknowledgement)) = record_of(&event) else { continue };
            let record = Record {
                seq: self.seq + 1,
                recorded_at_ms: unix_ms(SystemTime::now()),
                kind: kind.to_owned(),
                alert,
                acknowledgement,
                prev: self.prev.clone(),
            };
            let (mut line, hash) = seal(&record);
            line.push('\n');
            if let Err(error) = self.file.write_all(line.as_bytes()) {
                // Without the record the chain would skip; count it and keep the old head.
                tracing::error!(%error, "cannot write to the evidence log");
                telemetry::evidence_dropped();
                continue;
            }
            self.seq += 1;
            self.prev = hash;
            let due = match self.fsync {
                FsyncPolicy::Always => true,
                FsyncPolicy::Interval(every) => last_sync.elapsed() >= every,
                FsyncPolicy::Never => false,
            };
            if due {
                self.sync();
                last_sync = Instant::now();
            }
        }
        if self.fsync != FsyncPolicy::Never {
            self.sync();
        }
    }

    fn sync(&self) {
        if let Err(error) = self.file.sync_data() {
            tracing::error!(%error, "cannot flush the evidence log to disk");
        }
    }
}

/// Parses one line: the record and its (checked) hash.
fn parse_line(line: &str) -> Result<(Record, String), String> {
    let at = line.rfind(HASH_MARKER).ok_or("no \"hash\" field at the end")?;
    let hash = line[at + HASH_MARKER.len()..]
        .strip_suffix("\"}")
        .ok_or("the line does not end with the hash")?;
    let body = format!("{}}}", &line[..at]);
    let record: Record =
        serde_json::from_str(&body).map_err(|e| format!("not a valid record: {e}"))?;
    let computed = hex(&Sha256::digest(body.as_bytes()));
    if computed != hash {
        return Err("its content does not match its hash (the record was edited)".to_owned());
    }
    Ok((record, computed))
}

/// A chain that checks out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Records in the file.
    pub records: u64,
    /// The last record's hash (64 zeros for an empty file): copy it elsewhere to anchor the
    /// file as it stands.
    pub last_hash: String,
}

/// The first record that breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct ChainBroken {
    /// The line, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

/// Checks every record of a log's text: its hash, its `seq` and its link to the one before.
///
/// # Errors
/// The first bad record.
pub fn verify(text: &str) -> Result<Verified, ChainBroken> {
    let mut prev = GENESIS.to_owned();
    let mut records = 0u64;
    for (index, line) in text.split_terminator('\n').enumerate() {
        let broken = |reason: String| ChainBroken { line: index + 1, reason };
        let (record, hash) = parse_line(line).map_err(broken)?;
        let expected = records + 1;
        if record.seq != expected {
            return Err(broken(format!(
                "seq {} where {expected} was expected (a record was removed, inserted or \
                 reordered before this one)",
                record.seq
            )));
        }
        if record.prev != prev {
            return Err(broken(
                "prev is not the hash of the record before (a record was removed, inserted, \
                 reordered or edited before this one)"
                    .to_owned(),
            ));
        }
        prev = hash;
        records += 1;
    }
    Ok(Verified { records, last_hash: prev })
}

/// Reads and verifies a log file.
///
/// # Errors
/// An unreadable file (as a [`ChainBroken`] at line 0) or the first bad record.
pub fn verify_file(path: &Path) -> Result<Verified, ChainBroken> {
    let text = std::fs::read_to_string(path).map_err(|e| ChainBroken {
        line: 0,
        reason: format!("cannot read {}: {e}", path.display()),
    })?;
    verify(&text)
}

/// The records of one conversation, in file order, skipping lines that do not parse (the
/// chain result says whether there are any).
fn conversation_records(text: &str, conversation_id: &str) -> Vec<Record> {
    text.lines()
        .filter_map(|line| parse_line(line).ok())
        .map(|(record, _)| record)
        .filter(|r| r.alert.conversation_id == conversation_id)
        .collect()
}

fn utc(ms: u64) -> String {
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm), so the report needs
    // no date crate.
    let (days, rem) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s, milli) = (rem / 3_600_000, rem / 60_000 % 60, rem / 1000 % 60, rem % 1000);
    format!("{year:04}-{month:02}-{day:02} {h:02}:{m:02}:{s:02}.{milli:03} UTC")
}

/// Markdown that must not break the report's structure: pipes and line breaks escaped.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace(['\n', '\r'], " ")
}

/// An incident report (Markdown) for one conversation from a log's text: the chain check
/// result, a timeline, every quoted piece of evidence with its policy item, and who
/// acknowledged what and when.
pub fn export(text: &str, source: &str, conversation_id: &str) -> String {
    let records = conversation_records(text, conversation_id);
    let mut out = String::new();
    let _ = writeln!(out, "# Incident report: conversation `{}`\n", cell(conversation_id));
    let _ = writeln!(out, "- Evidence log: `{}`", cell(source));
    match verify(text) {
        Ok(v) => {
            let _ = writeln!(
                out,
                "- Chain check: **intact** ({} records; last hash `{}`)",
                v.records, v.last_hash
            );
        }
        Err(broken) => {
            let _ = writeln!(
                out,
                "- Chain check: **BROKEN** at {broken}. Records after that line may have been \
                 altered; treat this report with caution."
            );
        }
    }
    if let Some(first) = records.first() {
        let _ = writeln!(out, "- Tenant: `{}`", cell(&first.alert.tenant_id));
        let _ = writeln!(out, "- Queue: `{}`", cell(&first.alert.queue));
        let _ = writeln!(out, "- Agent: `{}`", cell(&first.alert.agent_id));
    }
    let _ = writeln!(out, "- Records for this conversation: {}\n", records.len());
    if records.is_empty() {
        let _ = writeln!(out, "No alert or acknowledgement was recorded for this conversation.");
        return out;
    }

    let _ = writeln!(out, "## Timeline\n");
    let _ = writeln!(
        out,
        "| Recorded (UTC) | Log line | Event | Alert | Category | Severity | Status |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for r in &records {
        let event = match (r.kind.as_str(), &r.acknowledgement) {
            ("acknowledgement", Some(a)) => {
                format!("acknowledged by `{}`: {}", cell(&a.acknowledged_by), a.outcome)
            }
            ("alert_update", _) => "alert updated".to_owned(),
            _ => format!("alert raised (segment {})", r.alert.segment_seq),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | `{}` | {} | {} | {} |",
            utc(r.recorded_at_ms),
            r.seq,
            event,
            cell(&r.alert.alert_id),
            r.alert.category,
            r.alert.severity,
            r.alert.status
        );
    }

    let _ = writeln!(out, "\n## Evidence\n");
    let mut seen = std::collections::HashSet::new();
    for r in records.iter().filter(|r| r.kind != "acknowledgement") {
        if !seen.insert((r.alert.alert_id.clone(), r.alert.status.clone())) {
            continue;
        }
        let item = r
            .alert
            .category
            .parse::<crate::policy::Category>()
            .map_or("(unknown category)", crate::policy::Category::policy_item);
        let _ = writeln!(
            out,
            "### Alert `{}`: {} ({}), {}\n",
            cell(&r.alert.alert_id),
            r.alert.category,
            r.alert.severity,
            r.alert.status
        );
        let _ = writeln!(
            out,
            "- Raised: {} (segment {})",
            utc(r.alert.created_at_ms),
            r.alert.segment_seq
        );
        let _ = writeln!(out, "- Policy item: {item}");
        if let Some(previous) = &r.alert.previous_alert_id {
            let _ = writeln!(out, "- Escalates alert `{}`", cell(previous));
        }
        for e in &r.alert.evidence {
            let _ = writeln!(out, "\n> 「{}」\n", cell(&e.quote));
            let _ = writeln!(out, "- In context: …{}…", cell(&e.context));
            let _ = writeln!(out, "- Lexicon entry `{}`: {}", cell(&e.entry_id), cell(&e.reason));
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Acknowledgements\n");
    let acks: Vec<_> =
        records.iter().filter_map(|r| r.acknowledgement.as_ref().map(|a| (r, a))).collect();
    if acks.is_empty() {
        let _ = writeln!(out, "No supervisor acknowledged these alerts.");
    } else {
        let _ = writeln!(out, "| When (UTC) | Who | Alert | Outcome | Note |");
        let _ = writeln!(out, "|---|---|---|---|---|");
        for (r, a) in acks {
            let _ = writeln!(
                out,
                "| {} | `{}` | `{}` | {} | {} |",
                utc(a.acknowledged_at_ms),
                cell(&a.acknowledged_by),
                cell(&r.alert.alert_id),
                a.outcome,
                cell(&a.note)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, prev: &str) -> Record {
        Record {
            seq,
            recorded_at_ms: 1_700_000_000_000 + seq,
            kind: "alert".into(),
            alert: AlertRecord {
                alert_id: format!("a{seq}"),
                tenant_id: "t".into(),
                conversation_id: "c".into(),
                queue: "q".into(),
                agent_id: "agent".into(),
                segment_seq: seq,
                category: "ATTACK".into(),
                severity: "HIGH".into(),
                status: "CONFIRMED".into(),
                created_at_ms: 1_700_000_000_000,
                previous_alert_id: None,
                risk_score: 0.5,
                evidence: vec![EvidenceRecord {
                    quote: "ばか".into(),
                    context: "この|ばか".into(),
                    entry_id: "attack.baka".into(),
                    reason: "insult".into(),
                }],
            },
            acknowledgement: None,
            prev: prev.into(),
        }
    }

    /// Five chained lines, as the writer makes them.
    fn chain() -> Vec<String> {
        let mut prev = GENESIS.to_owned();
        (1..=5)
            .map(|seq| {
                let (line, hash) = seal(&record(seq, &prev));
                prev = hash;
                line
            })
            .collect()
    }

    fn text(lines: &[String]) -> String {
        lines.iter().map(|l| format!("{l}\n")).collect()
    }

    #[test]
    fn an_intact_chain_verifies() {
        let v = verify(&text(&chain())).expect("intact");
        assert_eq!(v.records, 5);
        assert_eq!(verify("").expect("empty is intact").last_hash, GENESIS);
    }

    #[test]
    fn an_edited_record_is_named() {
        for target in [1, 4] {
            let mut lines = chain();
            lines[target] = lines[target].replace("ばか", "ばーか");
            let broken = verify(&text(&lines)).expect_err("edited");
            assert_eq!(broken.line, target + 1);
            assert!(broken.reason.contains("edited"), "{broken}");
        }
    }

    #[test]
    fn an_edited_record_with_a_fresh_hash_breaks_the_next_link() {
        let mut lines = chain();
        let prev = parse_line(&lines[1]).expect("line 2").1;
        let mut edited = record(3, &prev);
        edited.alert.severity = "LOW".into();
        lines[2] = seal(&edited).0;
        let broken = verify(&text(&lines)).expect_err("re-hashed edit");
        assert_eq!(broken.line, 4, "{broken}");
    }

    #[test]
    fn removed_inserted_and_reordered_records_are_named() {
        let mut removed = chain();
        removed.remove(2);
        let broken = verify(&text(&removed)).expect_err("removed");
        assert_eq!(broken.line, 3);
        assert!(broken.reason.contains("removed"), "{broken}");

        let mut inserted = chain();
        let extra = inserted[1].clone();
        inserted.insert(3, extra);
        assert_eq!(verify(&text(&inserted)).expect_err("inserted").line, 4);

        let mut reordered = chain();
        reordered.swap(1, 2);
        assert_eq!(verify(&text(&reordered)).expect_err("reordered").line, 2);

        let mut garbage = chain();
        garbage[4] = "not json".into();
        assert_eq!(verify(&text(&garbage)).expect_err("garbage").line, 5);
    }

    #[test]
    fn fsync_policies_parse() {
        assert_eq!("always".parse(), Ok(FsyncPolicy::Always));
        assert_eq!("never".parse(), Ok(FsyncPolicy::Never));
        assert_eq!("2s".parse(), Ok(FsyncPolicy::Interval(Duration::from_secs(2))));
        assert!("0s".parse::<FsyncPolicy>().is_err());
        assert!("sometimes".parse::<FsyncPolicy>().is_err());
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::Never,
            FsyncPolicy::Interval(Duration::from_millis(1500)),
        ] {
            assert_eq!(policy.to_string().parse(), Ok(policy));
        }
    }

    #[test]
    fn dates_are_civil_utc() {
        assert_eq!(utc(0), "1970-01-01 00:00:00.000 UTC");
        assert_eq!(utc(1_700_000_000_123), "2023-11-14 22:13:20.123 UTC");
    }

    #[test]
    fn the_report_quotes_evidence_and_the_chain_result() {
        let report = export(&text(&chain()), "evidence.jsonl", "c");
        assert!(report.contains("**intact** (5 records"), "{report}");
        assert!(report.contains("「ばか」"));
        assert!(report.contains("この\\|ばか"), "pipes escaped: {report}");
        assert!(report.contains("身体的または精神的な攻撃"));
    }
}
