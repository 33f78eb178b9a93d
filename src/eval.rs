//! Evaluation scorer behind `kasuhara-guard eval --corpus DIR`.
//!
//! The CLI loads a labelled corpus with [`load_corpus`] (format and score definitions:
//! `../shared/eval/SCHEMA.md`), screens every case through the real gRPC API, reduces what the
//! service raised to [`Raised`] alerts and hands them to [`score`]. The resulting [`Report`]
//! prints as a compact human-readable report, serialises to JSON, and [`Report::check_floors`]
//! turns it into a pass/fail for the CLI and CI.
//!
//! Nothing here screens text or talks to the API: the module only compares what a supervisor
//! labelled with what was raised, so the same numbers come out whether the outcomes come from a
//! live server or from a test.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::policy::{Category, Severity, UnknownCode};

/// File holding the single-utterance cases inside a corpus directory.
const UTTERANCES_FILE: &str = "utterances.jsonl";
/// File holding the streamed-conversation cases inside a corpus directory.
const CONVERSATIONS_FILE: &str = "conversations.jsonl";

/// Slack when comparing a score with a floor, so that an F1 computed as 0.8999999999 is not
/// reported as "below the floor 0.900" while printing as 0.900.
const FLOOR_EPSILON: f64 = 1e-9;

/// Why a corpus could not be loaded; every message names the file, and the line when there is one.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The directory holds neither corpus file (usually a wrong `--corpus` path).
    #[error("{}: no {UTTERANCES_FILE} or {CONVERSATIONS_FILE} found", dir.display())]
    NoCorpus {
        /// The directory that was searched.
        dir: PathBuf,
    },
    /// A corpus file exists but could not be read (permissions, not UTF-8, ...).
    #[error("{}: cannot read: {cause}", path.display())]
    Read {
        /// The file that failed.
        path: PathBuf,
        /// The I/O error; shown in the message rather than as a source so it is printed once.
        cause: io::Error,
    },
    /// A line is not valid JSON or does not have the schema's shape.
    #[error("{}:{line}:{column}: invalid json: {message}", path.display())]
    Json {
        /// The file that failed.
        path: PathBuf,
        /// 1-based line number in the file.
        line: usize,
        /// 1-based column in the line, as serde_json counts it.
        column: usize,
        /// serde_json's message, without its own (always line 1) location.
        message: String,
    },
    /// A category or severity code that the policy does not know.
    #[error("{}:{line}: {code}", path.display())]
    UnknownCode {
        /// The file that failed.
        path: PathBuf,
        /// 1-based line number in the file.
        line: usize,
        /// The rejected code and the accepted ones.
        code: UnknownCode,
    },
    /// A well-formed line that contradicts the schema (duplicate id, labels without severity, ...).
    #[error("{}:{line}: {reason}", path.display())]
    Invalid {
        /// The file that failed.
        path: PathBuf,
        /// 1-based line number in the file.
        line: usize,
        /// What is wrong, in lower case.
        reason: String,
    },
}

/// A whole evaluation corpus: single utterances and streamed conversations.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Corpus {
    /// Cases from `utterances.jsonl`, in file order.
    pub utterances: Vec<UtteranceCase>,
    /// Cases from `conversations.jsonl`, in file order (replay order matters for `customer_id`).
    pub conversations: Vec<ConversationCase>,
}

/// One utterance screened on its own, with the categories a careful supervisor would raise.
#[derive(Debug, Clone, PartialEq)]
pub struct UtteranceCase {
    /// Unique id within the file (`dev-u-0001`).
    pub id: String,
    /// `voice` (ASR style) or `chat` (typed).
    pub channel: String,
    /// `customer` or `agent`.
    pub speaker: String,
    /// The utterance as screened.
    pub text: String,
    /// Every category that should be raised; empty means the line must raise nothing.
    pub labels: Vec<Category>,
    /// Highest severity the line deserves; `None` for `NONE` (exactly when `labels` is empty).
    pub severity: Option<Severity>,
    /// Why the line is labelled so; empty when the file has no note.
    pub note: String,
}

/// One conversation screened as a stream of segments, with timing expectations.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationCase {
    /// Unique id within the file (`dev-c-01`).
    pub id: String,
    /// `voice` or `chat`.
    pub channel: String,
    /// Links repeated contacts by one customer (cross-conversation persistence).
    pub customer_id: String,
    /// Segments in strictly increasing `seq` order.
    pub segments: Vec<SegmentCase>,
    /// Alerts that must be raised, each by a given segment; empty means no alert at all.
    pub expect: Vec<Expectation>,
    /// Categories that must never be raised in this conversation.
    pub forbid: Vec<Category>,
    /// What the conversation tests; empty when the file has no note.
    pub note: String,
}

/// One transcript segment of a conversation, as the stream delivers it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentCase {
    /// Position in the stream; alerts are attributed to the segment that raised them.
    pub seq: u64,
    /// `customer` or `agent`.
    pub speaker: String,
    /// The segment text (possibly an interim ASR hypothesis).
    pub text: String,
    /// `false` for an interim hypothesis that a later segment revises.
    pub is_final: bool,
    /// Start of the audio span, in milliseconds from the start of the call.
    pub start_ms: u64,
    /// End of the audio span, in milliseconds from the start of the call.
    pub end_ms: u64,
}

/// An alert a conversation must raise: this category, at least this severity, by this segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expectation {
    /// The category that must be alerted.
    pub category: Category,
    /// The lowest acceptable severity.
    pub min_severity: Severity,
    /// The last segment at which the alert may first appear.
    pub by_seq: u64,
}

/// An alert as the service raised it, reduced to what scoring needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    /// Segment that raised it; 0 for single utterances.
    pub seq: u64,
    /// The alert's category.
    pub category: Category,
    /// The alert's severity.
    pub severity: Severity,
}

/// What the service raised for one utterance case.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UtteranceOutcome {
    /// The case id this outcome belongs to.
    pub id: String,
    /// Every alert raised for the utterance.
    pub raised: Vec<Raised>,
}

/// What the service raised over one conversation case.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConversationOutcome {
    /// The case id this outcome belongs to.
    pub id: String,
    /// Every alert raised during the conversation, with the segment that raised it.
    pub raised: Vec<Raised>,
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// `utterances.jsonl` line as written; codes stay strings until we can report them by line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUtterance {
    id: String,
    channel: String,
    speaker: String,
    text: String,
    labels: Vec<String>,
    severity: String,
    #[serde(default)]
    note: String,
}

/// `conversations.jsonl` line as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConversation {
    id: String,
    channel: String,
    customer_id: String,
    segments: Vec<SegmentCase>,
    expect: Vec<RawExpectation>,
    forbid: Vec<String>,
    #[serde(default)]
    note: String,
}

/// One `expect` item as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectation {
    category: String,
    min_severity: String,
    by_seq: u64,
}

/// Loads DIR/utterances.jsonl and DIR/conversations.jsonl; a missing file means an empty list,
/// but a directory with neither file is an error. Bad JSON, unknown category/severity codes →
/// error with path:line.
///
/// Unknown fields, duplicate ids, labels that disagree with the severity (`NONE` exactly when
/// `labels` is empty), duplicate labels, a category both expected and forbidden, and segments
/// out of `seq` order are rejected too: each would silently skew the scores.
pub fn load_corpus(dir: &Path) -> Result<Corpus, EvalError> {
    let utterance_path = dir.join(UTTERANCES_FILE);
    let conversation_path = dir.join(CONVERSATIONS_FILE);
    let utterance_rows = read_jsonl::<RawUtterance>(&utterance_path)?;
    let conversation_rows = read_jsonl::<RawConversation>(&conversation_path)?;
    if utterance_rows.is_none() && conversation_rows.is_none() {
        return Err(EvalError::NoCorpus { dir: dir.to_path_buf() });
    }

    let mut corpus = Corpus::default();
    let mut seen = HashMap::new();
    for (line, raw) in utterance_rows.unwrap_or_default() {
        check_unique_id(&utterance_path, line, &raw.id, &mut seen)?;
        corpus.utterances.push(utterance_case(&utterance_path, line, raw)?);
    }
    let mut seen = HashMap::new();
    for (line, raw) in conversation_rows.unwrap_or_default() {
        check_unique_id(&conversation_path, line, &raw.id, &mut seen)?;
        corpus.conversations.push(conversation_case(&conversation_path, line, raw)?);
    }
    Ok(corpus)
}

/// Reads one JSON Lines file into `(line number, row)` pairs; `None` when the file is absent.
fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Option<Vec<(usize, T)>>, EvalError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(EvalError::Read { path: path.to_path_buf(), cause }),
    };
    let mut rows = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        // Some editors prepend a byte-order mark, which is not JSON.
        let line = if index == 0 { line.trim_start_matches('\u{feff}') } else { line };
        // A blank line (typically a trailing one) holds no case; numbering still counts it.
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| json_error(path, line_no, &e))?;
        rows.push((line_no, row));
    }
    Ok(Some(rows))
}

/// Wraps a serde_json error with the file's line number; serde_json only saw one line, so its
/// own "at line 1 column N" is replaced by ours.
fn json_error(path: &Path, line: usize, error: &serde_json::Error) -> EvalError {
    let full = error.to_string();
    let location = format!(" at line {} column {}", error.line(), error.column());
    let message = full.strip_suffix(&location).unwrap_or(&full).to_owned();
    EvalError::Json { path: path.to_path_buf(), line, column: error.column(), message }
}

/// Builds an [`EvalError::Invalid`] for `path:line`.
fn invalid(path: &Path, line: usize, reason: String) -> EvalError {
    EvalError::Invalid { path: path.to_path_buf(), line, reason }
}

/// Rejects an id already used on an earlier line: outcomes are matched by id.
fn check_unique_id(
    path: &Path,
    line: usize,
    id: &str,
    seen: &mut HashMap<String, usize>,
) -> Result<(), EvalError> {
    match seen.get(id) {
        Some(first) => {
            Err(invalid(path, line, format!("duplicate id {id:?} (first on line {first})")))
        }
        None => {
            seen.insert(id.to_owned(), line);
            Ok(())
        }
    }
}

/// Parses a category code, reporting `path:line` on failure.
fn parse_category(path: &Path, line: usize, code: &str) -> Result<Category, EvalError> {
    code.parse().map_err(|code| EvalError::UnknownCode { path: path.to_path_buf(), line, code })
}

/// Parses a severity code (no `NONE`), reporting `path:line` on failure.
fn parse_severity(path: &Path, line: usize, code: &str) -> Result<Severity, EvalError> {
    code.parse().map_err(|code| EvalError::UnknownCode { path: path.to_path_buf(), line, code })
}

/// Parses an utterance's `severity`, where `NONE` marks a benign line.
fn parse_label_severity(
    path: &Path,
    line: usize,
    code: &str,
) -> Result<Option<Severity>, EvalError> {
    if code == "NONE" {
        return Ok(None);
    }
    code.parse().map(Some).map_err(|_| EvalError::UnknownCode {
        path: path.to_path_buf(),
        line,
        // The policy's own list omits NONE, which is valid here.
        code: UnknownCode {
            kind: "severity",
            value: code.to_owned(),
            expected: "NONE, LOW, MEDIUM, HIGH, CRITICAL",
        },
    })
}

/// Rejects a category listed twice, which would double-count nothing but signals a typo.
fn check_no_duplicates(
    path: &Path,
    line: usize,
    what: &str,
    categories: &[Category],
) -> Result<(), EvalError> {
    for (i, c) in categories.iter().enumerate() {
        if categories[..i].contains(c) {
            return Err(invalid(path, line, format!("duplicate {what} {c}")));
        }
    }
    Ok(())
}

/// Checks and converts one utterance line.
fn utterance_case(path: &Path, line: usize, raw: RawUtterance) -> Result<UtteranceCase, EvalError> {
    let labels = raw
        .labels
        .iter()
        .map(|code| parse_category(path, line, code))
        .collect::<Result<Vec<_>, _>>()?;
    check_no_duplicates(path, line, "label", &labels)?;
    let severity = parse_label_severity(path, line, &raw.severity)?;
    // Benign-line and CRITICAL scores both rely on severity and labels agreeing.
    match (labels.is_empty(), severity) {
        (true, Some(s)) => {
            return Err(invalid(path, line, format!("severity {s} on a line with no labels")));
        }
        (false, None) => {
            return Err(invalid(path, line, "severity NONE on a line with labels".to_owned()));
        }
        _ => {}
    }
    Ok(UtteranceCase {
        id: raw.id,
        channel: raw.channel,
        speaker: raw.speaker,
        text: raw.text,
        labels,
        severity,
        note: raw.note,
    })
}

/// Checks and converts one conversation line.
fn conversation_case(
    path: &Path,
    line: usize,
    raw: RawConversation,
) -> Result<ConversationCase, EvalError> {
    // "by seq N" only means something if segments are replayed in seq order.
    for pair in raw.segments.windows(2) {
        if pair[1].seq <= pair[0].seq {
            return Err(invalid(
                path,
                line,
                format!(
                    "segment seq {} follows seq {} (seq must increase)",
                    pair[1].seq, pair[0].seq
                ),
            ));
        }
    }
    let expect = raw
        .expect
        .iter()
        .map(|e| {
            Ok(Expectation {
                category: parse_category(path, line, &e.category)?,
                min_severity: parse_severity(path, line, &e.min_severity)?,
                by_seq: e.by_seq,
            })
        })
        .collect::<Result<Vec<_>, EvalError>>()?;
    let forbid = raw
        .forbid
        .iter()
        .map(|code| parse_category(path, line, code))
        .collect::<Result<Vec<_>, _>>()?;
    check_no_duplicates(path, line, "forbidden category", &forbid)?;
    // Such a case could never pass, whatever the service does.
    if let Some(e) = expect.iter().find(|e| forbid.contains(&e.category)) {
        return Err(invalid(path, line, format!("{} is both expected and forbidden", e.category)));
    }
    Ok(ConversationCase {
        id: raw.id,
        channel: raw.channel,
        customer_id: raw.customer_id,
        segments: raw.segments,
        expect,
        forbid,
        note: raw.note,
    })
}

// ---------------------------------------------------------------------------------------------
// Report
// ---------------------------------------------------------------------------------------------

/// Serialises policy codes as their strings; `policy` stays free of serde.
mod codes {
    use serde::Serializer;

    use crate::policy::{Category, Severity};

    /// A category as its code.
    pub fn category<S: Serializer>(c: &Category, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.code())
    }

    /// A list of categories as a list of codes.
    pub fn categories<S: Serializer>(cs: &[Category], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(cs.iter().map(|c| c.code()))
    }

    /// A severity as its code.
    pub fn severity<S: Serializer>(sev: &Severity, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(sev.code())
    }

    /// A label severity as its code, `NONE` for a benign line (as in the corpus).
    pub fn label_severity<S: Serializer>(sev: &Option<Severity>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(sev.map_or("NONE", Severity::code))
    }
}

/// Precision, recall and F1 of one yes/no decision over the utterances.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClassScore {
    /// Utterances that should be positive (labelled).
    pub support: usize,
    /// Positive and predicted positive.
    pub tp: usize,
    /// Predicted positive but not labelled.
    pub fp: usize,
    /// Labelled but not predicted.
    #[serde(rename = "fn")]
    pub fn_: usize,
    /// tp / (tp + fp), or 1.0 when nothing was predicted.
    pub precision: f64,
    /// tp / (tp + fn), or 1.0 when nothing is labelled.
    pub recall: f64,
    /// Harmonic mean of precision and recall, or 0.0 when both are 0.
    pub f1: f64,
}

impl ClassScore {
    /// Derives the ratios from the counts.
    fn from_counts(tp: usize, fp: usize, fn_: usize) -> ClassScore {
        let support = tp + fn_;
        let precision = if tp + fp == 0 { 1.0 } else { tp as f64 / (tp + fp) as f64 };
        let recall = if support == 0 { 1.0 } else { tp as f64 / support as f64 };
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        ClassScore { support, tp, fp, fn_, precision, recall, f1 }
    }
}

/// The utterance scores of one category; severity plays no part.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct CategoryScore {
    /// The category scored.
    #[serde(serialize_with = "codes::category")]
    pub category: Category,
    /// Counts and ratios, with `support` = lines labelled with the category.
    #[serde(flatten)]
    pub score: ClassScore,
}

/// `count` out of `total`, with the ratio.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ratio {
    /// The numerator (hits, false alarms, passes).
    pub count: usize,
    /// The denominator.
    pub total: usize,
    /// count / total; when total is 0, the value that means "nothing went wrong".
    pub value: f64,
}

impl Ratio {
    /// `count / total`, or `empty` when there is nothing to divide by.
    fn new(count: usize, total: usize, empty: f64) -> Ratio {
        let value = if total == 0 { empty } else { count as f64 / total as f64 };
        Ratio { count, total, value }
    }
}

/// A category raised for an utterance, at the highest severity raised for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RaisedCategory {
    /// The category raised.
    #[serde(serialize_with = "codes::category")]
    pub category: Category,
    /// The highest severity raised in that category.
    #[serde(serialize_with = "codes::severity")]
    pub severity: Severity,
}

/// How an utterance's outcome departs from its labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DiscrepancyKind {
    /// Labelled, but nothing was raised.
    Miss,
    /// Benign, but something was raised.
    FalseAlarm,
    /// Labelled and raised, but the raised categories differ from the labels.
    WrongCategory,
    /// Right categories, highest raised severity below the label.
    SeverityLow,
    /// Right categories, highest raised severity above the label (over-escalation).
    SeverityHigh,
}

impl fmt::Display for DiscrepancyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            DiscrepancyKind::Miss => "miss",
            DiscrepancyKind::FalseAlarm => "false alarm",
            DiscrepancyKind::WrongCategory => "wrong category",
            DiscrepancyKind::SeverityLow => "severity low",
            DiscrepancyKind::SeverityHigh => "severity high",
        })
    }
}

/// One utterance whose outcome departs from its labels.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UtteranceDiscrepancy {
    /// The case id.
    pub id: String,
    /// What kind of departure.
    pub kind: DiscrepancyKind,
    /// The utterance text (the corpora are synthetic, so it is safe to print).
    pub text: String,
    /// The labelled categories, in corpus order.
    #[serde(serialize_with = "codes::categories")]
    pub expected: Vec<Category>,
    /// The labelled severity (`NONE` for benign lines).
    #[serde(serialize_with = "codes::label_severity")]
    pub expected_severity: Option<Severity>,
    /// What was raised, one entry per category in policy order.
    pub raised: Vec<RaisedCategory>,
    /// The corpus note explaining the label.
    pub note: String,
}

/// The verdict on one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConversationResult {
    /// The case id.
    pub id: String,
    /// Whether every expectation held and nothing forbidden or unexpected was raised.
    pub passed: bool,
    /// Why it failed ("late ATTACK: first at seq 16, needed by 15"); empty when it passed.
    pub reasons: Vec<String>,
    /// The corpus note saying what the conversation tests.
    pub note: String,
}

/// Every score of one evaluation run; prints as a compact report via `Display`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Number of utterance cases scored.
    pub utterances: usize,
    /// Per-category scores, one per category in `Category::ALL` order.
    pub categories: Vec<CategoryScore>,
    /// "Raised at least one alert" against "has at least one label".
    pub any_alert: ClassScore,
    /// Benign lines that raised any alert, over benign lines.
    pub false_alarms: Ratio,
    /// CRITICAL lines that raised a CRITICAL alert in a labelled category, over CRITICAL lines.
    pub critical_recall: Ratio,
    /// Labelled lines whose highest raised severity equals the label, over labelled lines.
    pub severity_agreement: Ratio,
    /// Conversations that passed, over conversations.
    pub conversation_pass: Ratio,
    /// One row per conversation, in corpus order.
    pub conversation_results: Vec<ConversationResult>,
    /// Every utterance whose outcome departs from its labels, in corpus order.
    pub discrepancies: Vec<UtteranceDiscrepancy>,
    /// Ids of outcomes that match no case (ignored in the scores; usually a CLI bug).
    pub unmatched_outcomes: Vec<String>,
}

/// Minimum scores a run must reach; [`Report::check_floors`] lists every one it misses.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Floors {
    /// Lowest acceptable any-alert F1.
    pub any_alert_f1: f64,
    /// Highest acceptable false-alarm rate on benign lines.
    pub max_false_alarm_rate: f64,
    /// Lowest acceptable CRITICAL recall.
    pub critical_recall: f64,
    /// Lowest acceptable F1 of each category with enough support.
    pub category_f1: f64,
    /// Categories with fewer labelled lines than this are exempt from `category_f1`, since a
    /// handful of lines makes F1 jump in large steps.
    pub category_min_support: usize,
    /// Lowest acceptable conversation pass rate.
    pub conversation_pass_rate: f64,
}

impl Floors {
    /// Floors that every report meets.
    pub const NONE: Floors = Floors {
        any_alert_f1: 0.0,
        max_false_alarm_rate: 1.0,
        critical_recall: 0.0,
        category_f1: 0.0,
        category_min_support: 0,
        conversation_pass_rate: 0.0,
    };
}

impl Default for Floors {
    fn default() -> Self {
        Floors::NONE
    }
}

// ---------------------------------------------------------------------------------------------
// Scoring
// ---------------------------------------------------------------------------------------------

/// Groups outcome alerts by case id; ids that match no case are appended to `unmatched`.
fn index_outcomes<'a>(
    case_ids: impl Iterator<Item = &'a str>,
    outcomes: impl Iterator<Item = (&'a str, &'a [Raised])>,
    unmatched: &mut Vec<String>,
) -> HashMap<&'a str, Vec<Raised>> {
    let mut by_id: HashMap<&str, Vec<Raised>> = case_ids.map(|id| (id, Vec::new())).collect();
    for (id, raised) in outcomes {
        match by_id.get_mut(id) {
            // Several outcomes for one id are merged rather than dropped: nothing raised is lost.
            Some(all) => all.extend_from_slice(raised),
            None if !unmatched.iter().any(|u| u == id) => unmatched.push(id.to_owned()),
            None => {}
        }
    }
    by_id
}

/// Scores outcomes against the corpus (outcomes matched by id; a case with no outcome counts as
/// raising nothing).
pub fn score(
    corpus: &Corpus,
    utterances: &[UtteranceOutcome],
    conversations: &[ConversationOutcome],
) -> Report {
    let mut unmatched_outcomes = Vec::new();
    let utterance_raised = index_outcomes(
        corpus.utterances.iter().map(|c| c.id.as_str()),
        utterances.iter().map(|o| (o.id.as_str(), o.raised.as_slice())),
        &mut unmatched_outcomes,
    );
    let conversation_raised = index_outcomes(
        corpus.conversations.iter().map(|c| c.id.as_str()),
        conversations.iter().map(|o| (o.id.as_str(), o.raised.as_slice())),
        &mut unmatched_outcomes,
    );

    // Per category: [tp, fp, fn], indexed like Category::ALL.
    let mut counts = [[0usize; 3]; Category::ALL.len()];
    let (mut any_tp, mut any_fp, mut any_fn) = (0, 0, 0);
    let (mut benign, mut benign_alarms) = (0, 0);
    let (mut critical, mut critical_hits) = (0, 0);
    let (mut positives, mut severity_hits) = (0, 0);
    let mut discrepancies = Vec::new();

    for case in &corpus.utterances {
        let raised = utterance_raised.get(case.id.as_str()).map_or(&[][..], Vec::as_slice);
        // Highest severity per raised category; BTreeMap keeps policy order for the report.
        let mut predicted: BTreeMap<Category, Severity> = BTreeMap::new();
        for r in raised {
            let worst = predicted.entry(r.category).or_insert(r.severity);
            *worst = (*worst).max(r.severity);
        }

        for (i, &category) in Category::ALL.iter().enumerate() {
            match (case.labels.contains(&category), predicted.contains_key(&category)) {
                (true, true) => counts[i][0] += 1,
                (false, true) => counts[i][1] += 1,
                (true, false) => counts[i][2] += 1,
                (false, false) => {}
            }
        }

        let labelled = !case.labels.is_empty();
        let alerted = !predicted.is_empty();
        match (labelled, alerted) {
            (true, true) => any_tp += 1,
            (false, true) => any_fp += 1,
            (true, false) => any_fn += 1,
            (false, false) => {}
        }
        if !labelled {
            benign += 1;
            benign_alarms += usize::from(alerted);
        }
        if case.severity == Some(Severity::Critical) {
            critical += 1;
            // A CRITICAL alert in an unlabelled category would still end the call for the
            // wrong reason, so it does not count.
            let hit = raised
                .iter()
                .any(|r| r.severity == Severity::Critical && case.labels.contains(&r.category));
            critical_hits += usize::from(hit);
        }
        let highest = predicted.values().copied().max();
        if labelled {
            positives += 1;
            severity_hits += usize::from(highest.is_some() && highest == case.severity);
        }

        let kind = match (labelled, alerted) {
            (false, false) => None,
            (false, true) => Some(DiscrepancyKind::FalseAlarm),
            (true, false) => Some(DiscrepancyKind::Miss),
            (true, true) => {
                let same_categories = predicted.len() == case.labels.len()
                    && case.labels.iter().all(|c| predicted.contains_key(c));
                if !same_categories {
                    Some(DiscrepancyKind::WrongCategory)
                } else {
                    match highest.cmp(&case.severity) {
                        std::cmp::Ordering::Less => Some(DiscrepancyKind::SeverityLow),
                        std::cmp::Ordering::Greater => Some(DiscrepancyKind::SeverityHigh),
                        std::cmp::Ordering::Equal => None,
                    }
                }
            }
        };
        if let Some(kind) = kind {
            discrepancies.push(UtteranceDiscrepancy {
                id: case.id.clone(),
                kind,
                text: case.text.clone(),
                expected: case.labels.clone(),
                expected_severity: case.severity,
                raised: predicted
                    .iter()
                    .map(|(&category, &severity)| RaisedCategory { category, severity })
                    .collect(),
                note: case.note.clone(),
            });
        }
    }

    let conversation_results: Vec<ConversationResult> = corpus
        .conversations
        .iter()
        .map(|case| {
            let raised = conversation_raised.get(case.id.as_str()).map_or(&[][..], Vec::as_slice);
            let reasons = judge_conversation(case, raised);
            ConversationResult {
                id: case.id.clone(),
                passed: reasons.is_empty(),
                reasons,
                note: case.note.clone(),
            }
        })
        .collect();
    let passed = conversation_results.iter().filter(|r| r.passed).count();

    Report {
        utterances: corpus.utterances.len(),
        categories: Category::ALL
            .iter()
            .zip(counts)
            .map(|(&category, [tp, fp, fn_])| CategoryScore {
                category,
                score: ClassScore::from_counts(tp, fp, fn_),
            })
            .collect(),
        any_alert: ClassScore::from_counts(any_tp, any_fp, any_fn),
        false_alarms: Ratio::new(benign_alarms, benign, 0.0),
        critical_recall: Ratio::new(critical_hits, critical, 1.0),
        severity_agreement: Ratio::new(severity_hits, positives, 1.0),
        conversation_pass: Ratio::new(passed, conversation_results.len(), 1.0),
        conversation_results,
        discrepancies,
        unmatched_outcomes,
    }
}

/// Earliest segment at which `category` was raised at `min` severity or above.
fn first_seq(raised: &[Raised], category: Category, min: Severity) -> Option<u64> {
    raised.iter().filter(|r| r.category == category && r.severity >= min).map(|r| r.seq).min()
}

/// Every reason a conversation fails; empty when it passes.
fn judge_conversation(case: &ConversationCase, raised: &[Raised]) -> Vec<String> {
    let mut reasons = Vec::new();
    for e in &case.expect {
        match first_seq(raised, e.category, e.min_severity) {
            Some(seq) if seq <= e.by_seq => {}
            Some(seq) => reasons
                .push(format!("late {}: first at seq {seq}, needed by {}", e.category, e.by_seq)),
            None => {
                let missing =
                    format!("missing {}>={} by seq {}", e.category, e.min_severity, e.by_seq);
                // Saying what did arrive tells a too-low severity apart from a miss.
                let best = raised.iter().filter(|r| r.category == e.category).map(|r| r.severity);
                reasons.push(match best.max() {
                    Some(best) => format!("{missing} (raised at most {best})"),
                    None => missing,
                });
            }
        }
    }
    for &category in &case.forbid {
        if let Some(seq) = first_seq(raised, category, Severity::Low) {
            reasons.push(format!("forbidden {category} at seq {seq}"));
        }
    }
    if case.expect.is_empty() {
        // Forbidden categories were reported above; one reason per alert is enough.
        for category in Category::ALL.into_iter().filter(|c| !case.forbid.contains(c)) {
            if let Some(seq) = first_seq(raised, category, Severity::Low) {
                reasons.push(format!("unexpected alert {category} at seq {seq}"));
            }
        }
    }
    reasons
}

impl Report {
    /// Checks the report against `floors`, returning every violated floor as a sentence.
    ///
    /// The category floor applies only to categories whose support reaches
    /// `floors.category_min_support`.
    pub fn check_floors(&self, floors: &Floors) -> Result<(), Vec<String>> {
        let mut violations = Vec::new();
        let below = |value: f64, floor: f64| value + FLOOR_EPSILON < floor;

        let any = &self.any_alert;
        if below(any.f1, floors.any_alert_f1) {
            violations.push(format!(
                "any-alert F1 {:.3} is below the floor {:.3} (precision {:.3}, recall {:.3})",
                any.f1, floors.any_alert_f1, any.precision, any.recall
            ));
        }
        let fa = &self.false_alarms;
        if fa.value > floors.max_false_alarm_rate + FLOOR_EPSILON {
            violations.push(format!(
                "false-alarm rate {:.3} ({}/{} benign lines) is above the ceiling {:.3}",
                fa.value, fa.count, fa.total, floors.max_false_alarm_rate
            ));
        }
        let cr = &self.critical_recall;
        if below(cr.value, floors.critical_recall) {
            violations.push(format!(
                "CRITICAL recall {:.3} ({}/{} CRITICAL lines) is below the floor {:.3}",
                cr.value, cr.count, cr.total, floors.critical_recall
            ));
        }
        for c in &self.categories {
            if c.score.support >= floors.category_min_support
                && below(c.score.f1, floors.category_f1)
            {
                violations.push(format!(
                    "{} F1 {:.3} (support {}) is below the floor {:.3}",
                    c.category, c.score.f1, c.score.support, floors.category_f1
                ));
            }
        }
        let cp = &self.conversation_pass;
        if below(cp.value, floors.conversation_pass_rate) {
            violations.push(format!(
                "conversation pass rate {:.3} ({}/{} conversations) is below the floor {:.3}",
                cp.value, cp.count, cp.total, floors.conversation_pass_rate
            ));
        }
        if violations.is_empty() { Ok(()) } else { Err(violations) }
    }
}

/// Width of the category column: the longest code, `DISCRIMINATION_SEXUAL`.
const CODE_WIDTH: usize = 21;

/// Categories joined by `+`, or `none`.
fn join_categories(categories: impl Iterator<Item = Category>) -> String {
    let codes: Vec<&str> = categories.map(Category::code).collect();
    if codes.is_empty() { "none".to_owned() } else { codes.join("+") }
}

/// Text on one line, so a stray newline in a case cannot break the report's layout.
fn one_line(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "utterances: {}", self.utterances)?;
        writeln!(
            f,
            "{:<CODE_WIDTH$} {:>7} {:>5} {:>5} {:>5} {:>6} {:>6} {:>6}",
            "category", "support", "tp", "fp", "fn", "P", "R", "F1"
        )?;
        for c in &self.categories {
            let s = &c.score;
            writeln!(
                f,
                "{:<CODE_WIDTH$} {:>7} {:>5} {:>5} {:>5} {:>6.3} {:>6.3} {:>6.3}",
                c.category.code(),
                s.support,
                s.tp,
                s.fp,
                s.fn_,
                s.precision,
                s.recall,
                s.f1
            )?;
        }
        writeln!(f)?;

        let any = &self.any_alert;
        writeln!(
            f,
            "{:<20}P {:.3}  R {:.3}  F1 {:.3}  (tp {}, fp {}, fn {})",
            "any alert", any.precision, any.recall, any.f1, any.tp, any.fp, any.fn_
        )?;
        let summary = [
            ("false-alarm rate", &self.false_alarms, "benign lines alerted"),
            ("CRITICAL recall", &self.critical_recall, "CRITICAL lines caught"),
            ("severity agreement", &self.severity_agreement, "labelled lines"),
            ("conversations", &self.conversation_pass, "passed"),
        ];
        for (name, ratio, what) in summary {
            writeln!(f, "{name:<20}{:.3}  ({}/{} {what})", ratio.value, ratio.count, ratio.total)?;
        }
        if !self.unmatched_outcomes.is_empty() {
            writeln!(
                f,
                "outcomes matching no case (ignored): {}",
                self.unmatched_outcomes.join(", ")
            )?;
        }

        writeln!(f)?;
        if self.discrepancies.is_empty() {
            writeln!(f, "misses and false alarms: none")?;
        } else {
            writeln!(f, "misses and false alarms: {}", self.discrepancies.len())?;
            let id_width = self.discrepancies.iter().map(|d| d.id.chars().count()).max();
            let id_width = id_width.unwrap_or(0);
            let rows: Vec<(String, String)> = self
                .discrepancies
                .iter()
                .map(|d| {
                    let expected = match d.expected_severity {
                        Some(s) => format!("{}@{s}", join_categories(d.expected.iter().copied())),
                        None => "none".to_owned(),
                    };
                    let raised = if d.raised.is_empty() {
                        "none".to_owned()
                    } else {
                        let parts: Vec<String> = d
                            .raised
                            .iter()
                            .map(|r| format!("{}@{}", r.category, r.severity))
                            .collect();
                        parts.join("+")
                    };
                    (expected, raised)
                })
                .collect();
            let expected_width = rows.iter().map(|(e, _)| e.len()).max().unwrap_or(0);
            let raised_width = rows.iter().map(|(_, r)| r.len()).max().unwrap_or(0);
            for (d, (expected, raised)) in self.discrepancies.iter().zip(&rows) {
                write!(
                    f,
                    "  {:<id_width$}  {:<14}  expected {expected:<expected_width$}  \
                     raised {raised:<raised_width$}  「{}」",
                    d.id,
                    d.kind,
                    one_line(&d.text)
                )?;
                if d.note.is_empty() {
                    writeln!(f)?;
                } else {
                    writeln!(f, "  ({})", one_line(&d.note))?;
                }
            }
        }

        writeln!(f)?;
        let failed: Vec<&ConversationResult> =
            self.conversation_results.iter().filter(|r| !r.passed).collect();
        if failed.is_empty() {
            writeln!(f, "failed conversations: none")?;
        } else {
            writeln!(
                f,
                "failed conversations: {}/{}",
                failed.len(),
                self.conversation_results.len()
            )?;
            for r in failed {
                if r.note.is_empty() {
                    writeln!(f, "  {}", r.id)?;
                } else {
                    writeln!(f, "  {}  ({})", r.id, one_line(&r.note))?;
                }
                for reason in &r.reasons {
                    writeln!(f, "    - {reason}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use Category::*;
    use Severity::*;

    /// A labelled utterance case with filler metadata.
    fn utt(id: &str, labels: &[Category], severity: Option<Severity>) -> UtteranceCase {
        UtteranceCase {
            id: id.to_owned(),
            channel: "voice".to_owned(),
            speaker: "customer".to_owned(),
            text: format!("text of {id}"),
            labels: labels.to_vec(),
            severity,
            note: String::new(),
        }
    }

    /// A conversation case with `n` filler segments numbered from 1.
    fn conv(id: &str, n: u64, expect: &[Expectation], forbid: &[Category]) -> ConversationCase {
        ConversationCase {
            id: id.to_owned(),
            channel: "voice".to_owned(),
            customer_id: "cust-1".to_owned(),
            segments: (1..=n)
                .map(|seq| SegmentCase {
                    seq,
                    speaker: "customer".to_owned(),
                    text: format!("segment {seq}"),
                    is_final: true,
                    start_ms: seq * 1000,
                    end_ms: seq * 1000 + 900,
                })
                .collect(),
            expect: expect.to_vec(),
            forbid: forbid.to_vec(),
            note: String::new(),
        }
    }

    /// An expectation, briefly.
    fn exp(category: Category, min_severity: Severity, by_seq: u64) -> Expectation {
        Expectation { category, min_severity, by_seq }
    }

    /// A raised alert, briefly.
    fn alert(seq: u64, category: Category, severity: Severity) -> Raised {
        Raised { seq, category, severity }
    }

    /// An utterance outcome.
    fn uo(id: &str, raised: &[Raised]) -> UtteranceOutcome {
        UtteranceOutcome { id: id.to_owned(), raised: raised.to_vec() }
    }

    /// A conversation outcome.
    fn co(id: &str, raised: &[Raised]) -> ConversationOutcome {
        ConversationOutcome { id: id.to_owned(), raised: raised.to_vec() }
    }

    /// Outcomes that do exactly what the labels ask: each label at the line's severity, each
    /// expectation at its minimum severity on its deadline.
    fn oracle(corpus: &Corpus) -> (Vec<UtteranceOutcome>, Vec<ConversationOutcome>) {
        let utterances = corpus
            .utterances
            .iter()
            .map(|c| UtteranceOutcome {
                id: c.id.clone(),
                raised: c
                    .labels
                    .iter()
                    // Invariant: the loader (and these tests) give labelled lines a severity.
                    .map(|&category| alert(0, category, c.severity.expect("labelled line")))
                    .collect(),
            })
            .collect();
        let conversations = corpus
            .conversations
            .iter()
            .map(|c| ConversationOutcome {
                id: c.id.clone(),
                raised: c
                    .expect
                    .iter()
                    .map(|e| alert(e.by_seq, e.category, e.min_severity))
                    .collect(),
            })
            .collect();
        (utterances, conversations)
    }

    /// Five utterances (CRITICAL, two-label, benign, MEDIUM, benign) and two conversations
    /// (two timed expectations; silence with a forbidden category).
    fn small_corpus() -> Corpus {
        Corpus {
            utterances: vec![
                utt("u1", &[Attack], Some(Critical)),
                utt("u2", &[Intimidation, Dogeza], Some(High)),
                utt("u3", &[], None),
                utt("u4", &[ExcessiveDemand], Some(Medium)),
                utt("u5", &[], None),
            ],
            conversations: vec![
                conv("c1", 5, &[exp(Dogeza, High, 3), exp(Attack, Critical, 5)], &[Restraint]),
                conv("c2", 4, &[], &[Attack]),
            ],
        }
    }

    /// The scores of one category.
    fn category_score(report: &Report, category: Category) -> ClassScore {
        // Invariant: score() emits every category of Category::ALL.
        report.categories.iter().find(|c| c.category == category).expect("all categories").score
    }

    /// Outcomes matching the labels exactly give 1.0 everywhere, no discrepancies, all passes.
    #[test]
    fn perfect_outcomes_score_one() {
        let corpus = small_corpus();
        let (u, c) = oracle(&corpus);
        let report = score(&corpus, &u, &c);
        assert_perfect(&report);
        assert_eq!(report.utterances, 5);
        assert_eq!(report.false_alarms.total, 2);
        assert_eq!(report.critical_recall.total, 1);
        assert_eq!(category_score(&report, Attack).support, 1);
        let strict = Floors {
            any_alert_f1: 1.0,
            max_false_alarm_rate: 0.0,
            critical_recall: 1.0,
            category_f1: 1.0,
            category_min_support: 0,
            conversation_pass_rate: 1.0,
        };
        assert_eq!(report.check_floors(&strict), Ok(()));
    }

    /// Asserts every score is perfect and nothing is listed as wrong.
    fn assert_perfect(report: &Report) {
        assert_eq!(report.categories.len(), Category::ALL.len());
        for (c, expected) in report.categories.iter().zip(Category::ALL) {
            assert_eq!(c.category, expected, "categories in policy order");
            assert_eq!((c.score.fp, c.score.fn_), (0, 0), "{}", c.category);
            assert_eq!((c.score.precision, c.score.recall, c.score.f1), (1.0, 1.0, 1.0));
        }
        let any = report.any_alert;
        assert_eq!((any.precision, any.recall, any.f1), (1.0, 1.0, 1.0));
        assert_eq!(report.false_alarms.count, 0);
        assert_eq!(report.false_alarms.value, 0.0);
        assert_eq!(report.critical_recall.value, 1.0);
        assert_eq!(report.severity_agreement.value, 1.0);
        assert_eq!(report.conversation_pass.value, 1.0);
        assert!(report.conversation_results.iter().all(|r| r.passed && r.reasons.is_empty()));
        assert!(report.discrepancies.is_empty(), "{:?}", report.discrepancies);
        assert!(report.unmatched_outcomes.is_empty());
    }

    /// A benign line that raises an alert is a false positive for that category, for any-alert,
    /// and counts in the false-alarm rate.
    #[test]
    fn benign_false_alarm_is_counted() {
        let corpus = small_corpus();
        let (mut u, c) = oracle(&corpus);
        u[2].raised = vec![alert(0, Attack, Low)];
        let report = score(&corpus, &u, &c);
        let attack = category_score(&report, Attack);
        assert_eq!((attack.tp, attack.fp, attack.fn_), (1, 1, 0));
        assert_eq!(attack.precision, 0.5);
        assert_eq!(report.any_alert.fp, 1);
        assert_eq!((report.false_alarms.count, report.false_alarms.total), (1, 2));
        assert_eq!(report.false_alarms.value, 0.5);
        assert_eq!(report.discrepancies.len(), 1);
        assert_eq!(report.discrepancies[0].id, "u3");
        assert_eq!(report.discrepancies[0].kind, DiscrepancyKind::FalseAlarm);
    }

    /// A labelled line with no outcome at all counts as raising nothing: a miss.
    #[test]
    fn missing_outcome_is_a_miss() {
        let corpus = small_corpus();
        let (u, c) = oracle(&corpus);
        let u: Vec<_> = u.into_iter().filter(|o| o.id != "u4").collect();
        let report = score(&corpus, &u, &c);
        let demand = category_score(&report, ExcessiveDemand);
        assert_eq!((demand.support, demand.tp, demand.fn_), (1, 0, 1));
        assert_eq!((demand.precision, demand.recall, demand.f1), (1.0, 0.0, 0.0));
        assert_eq!(report.any_alert.fn_, 1);
        assert_eq!(report.any_alert.recall, 2.0 / 3.0);
        assert_eq!(report.severity_agreement.count, 2);
        let d = &report.discrepancies;
        assert_eq!((d.len(), d[0].id.as_str(), d[0].kind), (1, "u4", DiscrepancyKind::Miss));
        assert!(d[0].raised.is_empty());
    }

    /// Raising the wrong category is right for any-alert but a miss plus a false positive per
    /// category.
    #[test]
    fn wrong_category_is_fn_and_fp() {
        let corpus = small_corpus();
        let (mut u, c) = oracle(&corpus);
        u[3].raised = vec![alert(0, Intimidation, Medium)];
        let report = score(&corpus, &u, &c);
        let demand = category_score(&report, ExcessiveDemand);
        let menace = category_score(&report, Intimidation);
        assert_eq!((demand.tp, demand.fn_), (0, 1));
        assert_eq!((menace.tp, menace.fp, menace.support), (1, 1, 1));
        assert_eq!(report.any_alert.f1, 1.0, "some alert was right to be raised");
        assert_eq!(report.discrepancies[0].kind, DiscrepancyKind::WrongCategory);
        assert_eq!(
            report.discrepancies[0].raised,
            vec![RaisedCategory { category: Intimidation, severity: Medium }]
        );
    }

    /// Each way an utterance can depart from its labels gets its own kind; severity agreement
    /// compares only the highest raised severity with the label, whatever the categories.
    #[test]
    fn discrepancy_kinds() {
        use DiscrepancyKind::*;
        type Row<'a> =
            (&'a [Category], Option<Severity>, &'a [Raised], Option<DiscrepancyKind>, usize);
        let table: &[Row<'_>] = &[
            (&[], None, &[], None, 0),
            (&[], None, &[alert(0, Other, Low)], Some(FalseAlarm), 0),
            (&[Attack], Some(High), &[], Some(Miss), 0),
            (&[Attack], Some(High), &[alert(0, Other, High)], Some(WrongCategory), 1),
            (&[Attack, Dogeza], Some(High), &[alert(0, Attack, High)], Some(WrongCategory), 1),
            (
                &[Attack],
                Some(High),
                &[alert(0, Attack, High), alert(0, Dogeza, Medium)],
                Some(WrongCategory),
                1,
            ),
            (&[Attack], Some(High), &[alert(0, Attack, Medium)], Some(SeverityLow), 0),
            (&[Attack], Some(High), &[alert(0, Attack, Critical)], Some(SeverityHigh), 0),
            // The highest of repeated alerts in one category is what counts.
            (&[Attack], Some(High), &[alert(0, Attack, Low), alert(0, Attack, High)], None, 1),
        ];
        for (i, &(labels, severity, raised, kind, agreed)) in table.iter().enumerate() {
            let corpus =
                Corpus { utterances: vec![utt("u", labels, severity)], conversations: vec![] };
            let report = score(&corpus, &[uo("u", raised)], &[]);
            assert_eq!(report.discrepancies.first().map(|d| d.kind), kind, "row {i}");
            let positives = usize::from(!labels.is_empty());
            let sa = report.severity_agreement;
            assert_eq!((sa.count, sa.total), (agreed, positives), "row {i}");
        }
    }

    /// CRITICAL recall counts only CRITICAL alerts in a labelled category on CRITICAL lines.
    #[test]
    fn critical_recall_needs_critical_alert_in_labelled_category() {
        let table: &[(&[Raised], usize)] = &[
            (&[alert(0, Attack, Critical)], 1),
            (&[alert(0, Attack, High)], 0),
            (&[alert(0, Attack, High), alert(0, PersonalAttack, Critical)], 0),
            (&[alert(0, Attack, High), alert(0, Attack, Critical)], 1),
            (&[], 0),
        ];
        for (i, &(raised, hits)) in table.iter().enumerate() {
            let corpus = Corpus {
                utterances: vec![
                    utt("crit", &[Attack], Some(Critical)),
                    utt("high", &[Attack], Some(High)),
                ],
                conversations: vec![],
            };
            // A CRITICAL alert on a HIGH line must not inflate the count or the total.
            let outcomes = [uo("crit", raised), uo("high", &[alert(0, Attack, Critical)])];
            let report = score(&corpus, &outcomes, &[]);
            let cr = report.critical_recall;
            assert_eq!((cr.count, cr.total), (hits, 1), "row {i}");
            assert_eq!(cr.value, hits as f64, "row {i}");
        }
        let none = score(&Corpus::default(), &[], &[]);
        assert_eq!(none.critical_recall.value, 1.0, "no CRITICAL lines, nothing missed");
    }

    /// Conversations pass only with every expectation on time, nothing forbidden, and silence
    /// when nothing is expected; each failure says why.
    #[test]
    fn conversation_verdicts() {
        let dogeza_by_3 = conv("c", 6, &[exp(Dogeza, High, 3)], &[Intimidation]);
        let quiet = conv("c", 6, &[], &[Attack]);
        let table: &[(&ConversationCase, &[Raised], &[&str])] = &[
            (&dogeza_by_3, &[alert(3, Dogeza, High)], &[]),
            (&dogeza_by_3, &[alert(2, Dogeza, Critical), alert(5, Attack, High)], &[]),
            (
                &dogeza_by_3,
                &[alert(4, Dogeza, High)],
                &["late DOGEZA: first at seq 4, needed by 3"],
            ),
            (
                &dogeza_by_3,
                &[alert(2, Dogeza, Medium)],
                &["missing DOGEZA>=HIGH by seq 3 (raised at most MEDIUM)"],
            ),
            (&dogeza_by_3, &[], &["missing DOGEZA>=HIGH by seq 3"]),
            (
                &dogeza_by_3,
                &[
                    alert(3, Dogeza, High),
                    alert(6, Intimidation, Low),
                    alert(5, Intimidation, High),
                ],
                &["forbidden INTIMIDATION at seq 5"],
            ),
            (&quiet, &[], &[]),
            (&quiet, &[alert(4, Other, Low)], &["unexpected alert OTHER at seq 4"]),
            (
                &quiet,
                &[alert(2, Attack, High), alert(3, Dogeza, High)],
                &["forbidden ATTACK at seq 2", "unexpected alert DOGEZA at seq 3"],
            ),
        ];
        for (i, &(case, raised, reasons)) in table.iter().enumerate() {
            let corpus = Corpus { utterances: vec![], conversations: vec![case.clone()] };
            let report = score(&corpus, &[], &[co("c", raised)]);
            let result = &report.conversation_results[0];
            assert_eq!(result.reasons, reasons, "row {i}");
            assert_eq!(result.passed, reasons.is_empty(), "row {i}");
            assert_eq!(report.conversation_pass.count, usize::from(reasons.is_empty()), "row {i}");
        }
    }

    /// Outcomes whose id matches no case are ignored by the scores but listed.
    #[test]
    fn unmatched_outcomes_are_listed() {
        let corpus = small_corpus();
        let (mut u, mut c) = oracle(&corpus);
        u.push(uo("ghost", &[alert(0, Attack, High)]));
        c.push(co("ghost-c", &[]));
        let report = score(&corpus, &u, &c);
        assert_eq!(report.unmatched_outcomes, ["ghost", "ghost-c"]);
        assert_eq!(report.any_alert.fp, 0);
        assert!(report.to_string().contains("outcomes matching no case (ignored): ghost, ghost-c"));
    }

    /// A fresh directory under the system temp dir holding the given corpus files.
    fn temp_corpus(files: &[(&str, &str)]) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kasuhara-eval-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        // Invariant: the name is unique to this process and call, and temp_dir is writable, so
        // creating the directory and its files succeeds.
        fs::create_dir_all(&dir).expect("create temp corpus dir");
        for (name, body) in files {
            fs::write(dir.join(name), body).expect("write temp corpus file");
        }
        dir
    }

    const GOOD_U: &str = r#"{"id": "u1", "channel": "voice", "speaker": "customer", "text": "土下座しろ", "labels": ["DOGEZA"], "severity": "HIGH", "note": "n"}"#;
    const GOOD_C: &str = r#"{"id": "c1", "channel": "voice", "customer_id": "x", "segments": [{"seq": 1, "speaker": "customer", "text": "土下座しろ", "is_final": true, "start_ms": 0, "end_ms": 900}], "expect": [{"category": "DOGEZA", "min_severity": "HIGH", "by_seq": 1}], "forbid": ["ATTACK"], "note": "n"}"#;

    /// Loader errors name the file and line (and what is wrong) for every malformed input.
    #[test]
    fn loader_errors_name_path_and_line() {
        // Later lines take a fresh id so that only the intended fault trips.
        let bad_category = GOOD_U.replace("DOGEZA", "KNEEL").replace("u1", "u2");
        let bad_severity = GOOD_U.replace("HIGH", "SEVERE");
        let bad_min = GOOD_C
            .replace(r#""min_severity": "HIGH""#, r#""min_severity": "NONE""#)
            .replace("c1", "c2");
        let bad_forbid = GOOD_C.replace(r#"["ATTACK"]"#, r#"["ATACK"]"#);
        let none_with_labels = GOOD_U.replace("HIGH", "NONE").replace("u1", "u2");
        let labels_missing = GOOD_U.replace(r#"["DOGEZA"]"#, "[]");
        let dup_label = GOOD_U.replace(r#"["DOGEZA"]"#, r#"["DOGEZA", "DOGEZA"]"#);
        let typo_field = GOOD_U.replace("labels", "lables");
        let contradiction = GOOD_C.replace(r#"["ATTACK"]"#, r#"["DOGEZA"]"#);
        let out_of_order = GOOD_C.replace(
            r#"[{"seq": 1,"#,
            r#"[{"seq": 2, "speaker": "agent", "text": "a", "is_final": true, "start_ms": 0, "end_ms": 1}, {"seq": 1,"#,
        );
        let u = UTTERANCES_FILE;
        let c = CONVERSATIONS_FILE;
        let table: Vec<(&str, String, usize, &str)> = vec![
            (u, format!("{GOOD_U}\n{{\"id\": \"u2\", \n"), 2, "invalid json"),
            (u, format!("{GOOD_U}\n\n{bad_category}\n"), 3, "unknown category \"KNEEL\""),
            (u, format!("{bad_severity}\n"), 1, "unknown severity \"SEVERE\""),
            (c, format!("{GOOD_C}\n{bad_min}\n"), 2, "unknown severity \"NONE\""),
            (c, format!("{bad_forbid}\n"), 1, "unknown category \"ATACK\""),
            (
                u,
                format!("{GOOD_U}\n{none_with_labels}\n"),
                2,
                "severity NONE on a line with labels",
            ),
            (u, format!("{labels_missing}\n"), 1, "severity HIGH on a line with no labels"),
            (u, format!("{dup_label}\n"), 1, "duplicate label DOGEZA"),
            (u, format!("{GOOD_U}\n{GOOD_U}\n"), 2, "duplicate id \"u1\" (first on line 1)"),
            (u, format!("{typo_field}\n"), 1, "unknown field `lables`"),
            (c, format!("{contradiction}\n"), 1, "DOGEZA is both expected and forbidden"),
            (c, format!("{out_of_order}\n"), 1, "segment seq 1 follows seq 2"),
        ];
        for (file, body, line, needle) in table {
            let dir = temp_corpus(&[(file, &body)]);
            let result = load_corpus(&dir);
            let _ = fs::remove_dir_all(&dir);
            let message = match result {
                Err(e) => e.to_string(),
                Ok(corpus) => panic!("{needle}: loaded {corpus:?}"),
            };
            let location = format!("{}:{line}:", dir.join(file).display());
            assert!(message.starts_with(&location), "{message:?} should start with {location:?}");
            assert!(message.contains(needle), "{message:?} should contain {needle:?}");
            assert!(!message.contains("at line 1 column"), "serde's own location is dropped");
        }
    }

    /// A missing file is an empty list, but a directory with neither file is an error.
    #[test]
    fn loader_missing_files() {
        let dir = temp_corpus(&[(UTTERANCES_FILE, &format!("{GOOD_U}\n\n"))]);
        let only_utterances = load_corpus(&dir);
        let _ = fs::remove_dir_all(&dir);
        // Invariant: a missing conversations.jsonl is an empty list, not an error.
        let corpus = only_utterances.expect("utterances alone are a corpus");
        assert_eq!((corpus.utterances.len(), corpus.conversations.len()), (1, 0));
        assert_eq!(corpus.utterances[0].labels, [Dogeza]);
        assert_eq!(corpus.utterances[0].severity, Some(High));

        let dir = temp_corpus(&[(CONVERSATIONS_FILE, GOOD_C)]);
        let only_conversations = load_corpus(&dir);
        let _ = fs::remove_dir_all(&dir);
        // Invariant: a missing utterances.jsonl is an empty list, not an error.
        let corpus = only_conversations.expect("conversations alone are a corpus");
        assert_eq!(corpus.conversations[0].expect, [exp(Dogeza, High, 1)]);
        assert_eq!(corpus.conversations[0].forbid, [Attack]);

        let dir = temp_corpus(&[]);
        let empty = load_corpus(&dir);
        let _ = fs::remove_dir_all(&dir);
        match empty {
            Err(e @ EvalError::NoCorpus { .. }) => {
                assert!(e.to_string().contains("no utterances.jsonl or conversations.jsonl"));
            }
            other => panic!("expected NoCorpus, got {other:?}"),
        }
    }

    /// check_floors reports every violated floor, and none under Floors::NONE.
    #[test]
    fn check_floors_reports_each_violation() {
        let corpus = small_corpus();
        let (mut u, mut c) = oracle(&corpus);
        u[0].raised = vec![alert(0, Attack, High)]; // CRITICAL line caught only at HIGH
        u[1].raised.clear(); // miss: INTIMIDATION and DOGEZA
        u[2].raised = vec![alert(0, Other, Low)]; // benign false alarm
        c[1].raised = vec![alert(2, Attack, Medium)]; // forbidden
        let report = score(&corpus, &u, &c);
        assert_eq!(report.check_floors(&Floors::NONE), Ok(()));
        assert_eq!(report.check_floors(&Floors::default()), Ok(()));

        let floors = Floors {
            any_alert_f1: 0.9,
            max_false_alarm_rate: 0.1,
            critical_recall: 0.9,
            category_f1: 0.8,
            category_min_support: 1,
            conversation_pass_rate: 0.9,
        };
        // Invariant: the outcomes above break every floor.
        let violations = report.check_floors(&floors).expect_err("floors are violated");
        let expected = [
            "any-alert F1 0.667 is below the floor 0.900 (precision 0.667, recall 0.667)",
            "false-alarm rate 0.500 (1/2 benign lines) is above the ceiling 0.100",
            "CRITICAL recall 0.000 (0/1 CRITICAL lines) is below the floor 0.900",
            "INTIMIDATION F1 0.000 (support 1) is below the floor 0.800",
            "DOGEZA F1 0.000 (support 1) is below the floor 0.800",
            "conversation pass rate 0.500 (1/2 conversations) is below the floor 0.900",
        ];
        assert_eq!(violations, expected);

        // OTHER (support 0, one false positive) has F1 0 but is exempt below the support floor.
        let all = Floors { category_min_support: 0, ..floors };
        // Invariant: lowering the support floor only adds violations to those above.
        let violations = report.check_floors(&all).expect_err("floors are violated");
        assert!(violations.iter().any(|v| v.starts_with("OTHER F1 0.000 (support 0)")));
        // A floor met exactly, up to float noise, is met.
        let exact = Floors { any_alert_f1: 2.0 / 3.0, ..Floors::NONE };
        assert_eq!(report.check_floors(&exact), Ok(()));
    }

    /// The printed report has the table, the summary with n/N, misses and failed conversations.
    #[test]
    fn display_report() {
        let corpus = small_corpus();
        let (mut u, mut c) = oracle(&corpus);
        u[3].raised.clear();
        c[0].raised = vec![alert(3, Dogeza, High), alert(6, Attack, Critical)];
        let text = score(&corpus, &u, &c).to_string();
        let expected_lines = [
            "category              support    tp    fp    fn      P      R     F1",
            "ATTACK                      1     1     0     0  1.000  1.000  1.000",
            "EXCESSIVE_DEMAND            1     0     0     1  1.000  0.000  0.000",
            "any alert           P 1.000  R 0.667  F1 0.800  (tp 2, fp 0, fn 1)",
            "false-alarm rate    0.000  (0/2 benign lines alerted)",
            "CRITICAL recall     1.000  (1/1 CRITICAL lines caught)",
            "severity agreement  0.667  (2/3 labelled lines)",
            "conversations       0.500  (1/2 passed)",
            "misses and false alarms: 1",
            "  u4  miss            expected EXCESSIVE_DEMAND@MEDIUM  raised none  「text of u4」",
            "failed conversations: 1/2",
            "  c1",
            "    - late ATTACK: first at seq 6, needed by 5",
        ];
        for line in expected_lines {
            assert!(text.lines().any(|l| l == line), "missing line {line:?} in\n{text}");
        }
    }

    /// The JSON form uses policy codes and the schema's names (`fn`, `NONE`).
    #[test]
    fn report_serialises_with_codes() {
        let corpus = small_corpus();
        let (mut u, c) = oracle(&corpus);
        u[2].raised = vec![alert(0, Attack, Low)];
        // Invariant: the report holds only strings, numbers, bools and lists: it always serialises.
        let json = serde_json::to_value(score(&corpus, &u, &c)).expect("report serialises");
        assert_eq!(json["categories"][0]["category"], "ATTACK");
        assert_eq!(json["categories"][0]["fn"], 0);
        assert_eq!(json["categories"][0]["precision"], 0.5);
        assert_eq!(json["discrepancies"][0]["kind"], "false_alarm");
        assert_eq!(json["discrepancies"][0]["expected_severity"], "NONE");
        assert_eq!(json["discrepancies"][0]["raised"][0]["severity"], "LOW");
        assert_eq!(json["conversation_pass"]["count"], 2);
    }

    /// The real dev corpus loads in full, and its own labels score as a perfect report.
    #[test]
    fn dev_corpus_labels_score_perfect() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval/dev");
        // Invariant: the dev corpus ships with the repository next to this crate.
        let corpus = load_corpus(&dir).expect("dev corpus loads");
        assert_eq!(corpus.utterances.len(), 400);
        assert_eq!(corpus.conversations.len(), 30);
        let (u, c) = oracle(&corpus);
        let report = score(&corpus, &u, &c);
        assert_perfect(&report);
        assert_eq!(report.conversation_pass.total, 30);
        assert_eq!(report.check_floors(&Floors::NONE), Ok(()));
    }
}
