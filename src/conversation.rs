//! Per-conversation state behind a `Screen` stream: split phrases, interim hypotheses, alert
//! hygiene, and the detectors of conduct over time.
//!
//! The state is owned by the stream's task (one conversation, one task), so it needs no lock;
//! only the repeat-caller history is shared ([`CallState`]).
//!
//! **Moving between nodes.** With a shared [`CallState`] (Redis), every final segment saves a
//! [`ConversationSnapshot`]; a conversation whose stream to one node broke can be started
//! again on another node with the same tenant and conversation id and continues from it.
//! Carried: the last seq and segment count, segment times, the carried text (at most
//! [`MAX_CARRIED_CHARS`]) and transcript length (so evidence offsets continue), per-family
//! persistence counts, the risk score and peak severity, per-category alert state (cooldown
//! and escalation), the evidence already alerted (so the same words do not alert again) and
//! the confirmed alert ids. Not carried: provisional alerts from interims after the last final
//! segment (the next final raises what they would have confirmed), and the tenant policy,
//! which is the new node's.
//!
//! - **Split phrases.** The customer's final text since the last sentence break (at most
//!   [`MAX_CARRIED_CHARS`]) is carried and screened again in front of the next final segment,
//!   so 土下|座しろ and ぶっこ|ろすぞ are found. Only hits that reach into the new segment are
//!   new; evidence offsets count chars of the customer's whole final transcript.
//! - **Interim hypotheses** are screened too and raise PROVISIONAL alerts; the next final
//!   customer segment confirms (same id) or retracts each one. Only final text counts for
//!   persistence, cooldowns and the risk score.
//! - **Hygiene.** One alert per (category, evidence); after an alert, a category stays quiet
//!   for the tenant's cooldown unless the severity rises, and an escalation names the alert it
//!   escalates.
//! - **Over time** (thresholds from the tenant's [`TenantPolicy`]): PERSISTENCE when one lexicon
//!   family (the same demand or abuse, in any wording) is raised in its Nth final segment, in
//!   this conversation or across the customer's contacts in the window, or in a repeat contact
//!   that raises a family alerted before; RESTRAINT when the call passes the time limit while
//!   the customer presses a demand raised before.
//!
//! Time is segment time (`start_ms`/`end_ms`), never the wall clock, so replays and tests are
//! deterministic.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use crate::alert::{Alert, AlertIds, AlertStatus, Summary};
use crate::callers::CallState;
use crate::config::TenantPolicy;
use crate::error::ScreenError;
use crate::pipeline::{Detection, Evidence, Finding, Pipeline, group};
use crate::policy::{Category, Severity};

/// The longest text accepted in one segment, in bytes. A turn of ASR is a few hundred bytes;
/// anything this long is a client bug, and refusing it bounds the work per segment.
pub const MAX_TEXT_BYTES: usize = 4096;
/// The longest id (conversation, tenant, customer, queue, agent) accepted, in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Who spoke a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    /// The customer: screened.
    Customer,
    /// The agent: never alerts.
    Agent,
}

/// Where a conversation comes from, from its `ConversationStart`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    /// The platform's conversation id.
    pub conversation_id: String,
    /// The tenant.
    pub tenant_id: String,
    /// The customer, for linking repeated contacts.
    pub customer_id: String,
    /// The queue.
    pub queue: String,
    /// The agent.
    pub agent_id: String,
    /// When the contact started (for linking repeated contacts).
    pub started_at: SystemTime,
}

impl ConversationInfo {
    /// Checks the ids: conversation and tenant required, all within [`MAX_ID_BYTES`].
    ///
    /// # Errors
    /// [`ScreenError::InvalidArgument`] naming the first bad field.
    pub fn validate(&self) -> Result<(), ScreenError> {
        require_id("start.conversation_id", &self.conversation_id, true)?;
        require_id("start.tenant_id", &self.tenant_id, true)?;
        require_id("start.customer_id", &self.customer_id, false)?;
        require_id("start.queue", &self.queue, false)?;
        require_id("start.agent_id", &self.agent_id, false)
    }
}

/// Checks one id field.
///
/// # Errors
/// Missing (when required) or longer than [`MAX_ID_BYTES`].
pub fn require_id(field: &'static str, value: &str, required: bool) -> Result<(), ScreenError> {
    if required && value.is_empty() {
        return Err(ScreenError::invalid(field, "is required"));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ScreenError::invalid(field, format!("longer than {MAX_ID_BYTES} bytes")));
    }
    Ok(())
}

/// Checks a text field's size.
///
/// # Errors
/// Longer than [`MAX_TEXT_BYTES`].
pub fn check_text(field: &'static str, text: &str) -> Result<(), ScreenError> {
    if text.len() > MAX_TEXT_BYTES {
        return Err(ScreenError::invalid(
            field,
            format!("{} bytes is longer than the limit of {MAX_TEXT_BYTES}", text.len()),
        ));
    }
    Ok(())
}

/// One incoming segment, decoded from the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIn {
    /// Position in the conversation.
    pub seq: u64,
    /// Who spoke.
    pub speaker: Speaker,
    /// The text.
    pub text: String,
    /// Final text (true) or interim ASR hypothesis (false).
    pub is_final: bool,
    /// Start of the speech, ms from the start of the conversation.
    pub start_ms: u64,
    /// End of the speech, ms from the start of the conversation.
    pub end_ms: u64,
}

/// The most final text carried into the next segment's screen, in chars: enough for any
/// lexicon phrase split across two segments, small enough to keep state per call bounded.
pub const MAX_CARRIED_CHARS: usize = 48;
/// Characters that end a sentence: the carried text restarts after them, because lindera
/// tokenises sentences independently, so screening from there gives the same words as
/// screening the whole transcript.
const SENTENCE_BREAKS: &[char] = &['。', '！', '？', '!', '?', '\n'];
/// Evidence keys remembered for de-duplication; beyond this the cooldown alone throttles.
const MAX_SEEN_EVIDENCE: usize = 512;
/// Provisional alerts awaiting a final at once; more interims without a final add none.
const MAX_PENDING_PROVISIONAL: usize = 32;
/// Alert ids listed in the summary.
const MAX_SUMMARY_IDS: usize = 256;

/// What the shared parts of the server lend a conversation.
#[derive(Debug, Clone, Copy)]
pub struct Services<'a> {
    /// The screening pipeline.
    pub pipeline: &'a Pipeline,
    /// Alert id source.
    pub ids: &'a AlertIds,
    /// Repeat-caller history and conversation snapshots.
    pub callers: &'a dyn CallState,
}

/// What one segment produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SegmentOutcome {
    /// Confirmed alerts of this segment: new ones and provisional ones it confirmed.
    pub alerts: Vec<Arc<Alert>>,
    /// New provisional alerts from an interim hypothesis.
    pub provisional: Vec<Arc<Alert>>,
    /// Provisional alerts this final confirmed or retracted (status already updated).
    pub updates: Vec<Arc<Alert>>,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct CategoryState {
    alert_id: String,
    #[serde(with = "severity_code")]
    severity: Severity,
    at_ms: u64,
}

/// A severity in a snapshot, by its policy code.
mod severity_code {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    use crate::policy::Severity;

    pub(super) fn serialize<S: Serializer>(severity: &Severity, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(severity.code())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Severity, D::Error> {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// What a conversation carries to another node; see the module docs. Categories and
/// severities are stored by their policy codes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ConversationSnapshot {
    /// The tenant.
    pub tenant_id: String,
    /// The conversation.
    pub conversation_id: String,
    last_seq: Option<u64>,
    segments: u64,
    first_start_ms: Option<u64>,
    last_end_ms: u64,
    carried: String,
    transcript_chars: usize,
    seen_evidence: Vec<(String, String, String)>,
    categories: Vec<(String, CategoryState)>,
    family_counts: Vec<(String, u32, usize)>,
    risk: f64,
    confirmed_ids: Vec<String>,
    peak: Option<String>,
}

/// The state of one open conversation.
#[derive(Debug)]
pub struct Conversation {
    info: ConversationInfo,
    policy: TenantPolicy,
    last_seq: Option<u64>,
    segments: u64,
    first_start_ms: Option<u64>,
    last_end_ms: u64,
    /// Final customer text since the last sentence break (at most MAX_CARRIED_CHARS).
    carried: String,
    /// Chars of final customer text so far.
    transcript_chars: usize,
    seen_evidence: HashSet<(Category, String, String)>,
    categories: BTreeMap<Category, CategoryState>,
    pending: Vec<Arc<Alert>>,
    /// Per family: distinct spans counted, and the end of the last one (transcript chars).
    family_counts: HashMap<String, (u32, usize)>,
    risk: f64,
    confirmed_ids: Vec<String>,
    peak: Option<Severity>,
}

/// The weight of one confirmed alert in the risk score.
fn risk_weight(severity: Severity) -> f64 {
    match severity {
        Severity::Low => 0.1,
        Severity::Medium => 0.25,
        Severity::High => 0.5,
        Severity::Critical => 0.9,
    }
}

impl Conversation {
    /// Opens a conversation under `policy` and registers the contact with the caller history.
    pub fn open(info: ConversationInfo, policy: TenantPolicy, callers: &dyn CallState) -> Self {
        if !info.customer_id.is_empty() {
            callers.open(
                &info.tenant_id,
                &info.customer_id,
                &info.conversation_id,
                info.started_at,
                policy.repeat_window,
            );
        }
        Self {
            info,
            policy,
            last_seq: None,
            segments: 0,
            first_start_ms: None,
            last_end_ms: 0,
            carried: String::new(),
            transcript_chars: 0,
            seen_evidence: HashSet::new(),
            categories: BTreeMap::new(),
            pending: Vec::new(),
            family_counts: HashMap::new(),
            risk: 0.0,
            confirmed_ids: Vec::new(),
            peak: None,
        }
    }

    /// What another node needs to continue this conversation.
    pub fn snapshot(&self) -> ConversationSnapshot {
        // Sets and maps are listed in sorted order, so equal states give equal snapshots.
        let mut seen_evidence: Vec<_> = self
            .seen_evidence
            .iter()
            .map(|(c, entry, normalized)| (c.code().to_owned(), entry.clone(), normalized.clone()))
            .collect();
        seen_evidence.sort();
        let mut categories: Vec<_> =
            self.categories.iter().map(|(c, state)| (c.code().to_owned(), state.clone())).collect();
        categories.sort_by(|a, b| a.0.cmp(&b.0));
        let mut family_counts: Vec<_> = self
            .family_counts
            .iter()
            .map(|(family, &(count, end))| (family.clone(), count, end))
            .collect();
        family_counts.sort();
        ConversationSnapshot {
            tenant_id: self.info.tenant_id.clone(),
            conversation_id: self.info.conversation_id.clone(),
            last_seq: self.last_seq,
            segments: self.segments,
            first_start_ms: self.first_start_ms,
            last_end_ms: self.last_end_ms,
            carried: self.carried.clone(),
            transcript_chars: self.transcript_chars,
            seen_evidence,
            categories,
            family_counts,
            risk: self.risk,
            confirmed_ids: self.confirmed_ids.clone(),
            peak: self.peak.map(|p| p.code().to_owned()),
        }
    }

    /// Continues from `snapshot`, saved by another node for this same conversation; a
    /// snapshot of another conversation, or one naming an unknown code, changes nothing.
    /// Returns whether it was applied.
    pub fn restore(&mut self, snapshot: ConversationSnapshot) -> bool {
        if snapshot.tenant_id != self.info.tenant_id
            || snapshot.conversation_id != self.info.conversation_id
        {
            return false;
        }
        let category = |code: &str| code.parse::<Category>().ok();
        let seen: Option<HashSet<_>> = snapshot
            .seen_evidence
            .into_iter()
            .map(|(c, entry, normalized)| Some((category(&c)?, entry, normalized)))
            .collect();
        let categories: Option<BTreeMap<_, _>> = snapshot
            .categories
            .into_iter()
            .map(|(c, state)| Some((category(&c)?, state)))
            .collect();
        let peak = match snapshot.peak {
            None => Some(None),
            Some(code) => code.parse::<Severity>().ok().map(Some),
        };
        let (Some(seen), Some(categories), Some(peak)) = (seen, categories, peak) else {
            return false;
        };
        self.last_seq = snapshot.last_seq;
        self.segments = snapshot.segments;
        self.first_start_ms = snapshot.first_start_ms;
        self.last_end_ms = snapshot.last_end_ms;
        self.carried = snapshot.carried.chars().take(MAX_CARRIED_CHARS).collect();
        self.transcript_chars = snapshot.transcript_chars;
        self.seen_evidence = seen;
        self.categories = categories;
        self.family_counts =
            snapshot.family_counts.into_iter().map(|(f, count, end)| (f, (count, end))).collect();
        self.risk = snapshot.risk;
        self.confirmed_ids = snapshot.confirmed_ids;
        self.peak = peak;
        true
    }

    /// Who the conversation belongs to.
    pub fn info(&self) -> &ConversationInfo {
        &self.info
    }

    /// The tenant policy in force.
    pub fn policy(&self) -> &TenantPolicy {
        &self.policy
    }

    /// Screens one segment.
    ///
    /// # Errors
    /// `InvalidArgument` for a seq that does not increase or an oversized text; `Internal`
    /// if the pipeline fails. The state is unchanged on error.
    pub fn screen(
        &mut self,
        services: Services<'_>,
        segment: &SegmentIn,
    ) -> Result<SegmentOutcome, ScreenError> {
        if let Some(last) = self.last_seq
            && segment.seq <= last
        {
            return Err(ScreenError::invalid(
                "segment.seq",
                format!("{} does not increase (last was {last})", segment.seq),
            ));
        }
        check_text("segment.text", &segment.text)?;
        if segment.end_ms < segment.start_ms {
            return Err(ScreenError::invalid("segment.end_ms", "is before start_ms"));
        }
        self.last_seq = Some(segment.seq);
        self.segments += 1;
        self.first_start_ms =
            Some(self.first_start_ms.map_or(segment.start_ms, |s| s.min(segment.start_ms)));
        self.last_end_ms = self.last_end_ms.max(segment.end_ms);
        let outcome = match (segment.speaker, segment.is_final) {
            (Speaker::Agent, _) => SegmentOutcome::default(),
            (Speaker::Customer, false) => self.screen_interim(services, segment)?,
            (Speaker::Customer, true) => self.screen_final(services, segment)?,
        };
        if segment.is_final && services.callers.keeps_snapshots() {
            // Kept as long as the conversation could stay open without a message.
            services.callers.save_snapshot(&self.snapshot(), self.policy.idle_timeout);
        }
        Ok(outcome)
    }

    /// Screens `text` with offsets into the transcript: once alone, and once behind the
    /// carried text, keeping from the second only hits that reach into `text`.
    ///
    /// Both are needed. Behind the carried text, a phrase split across segments is whole
    /// (土下|座しろ); alone, the segment is tokenised as the customer said it, without the
    /// previous segment's last word running into its first (ふざけてんの|おいなめてんのか would
    /// otherwise tokenise as のおい…). Duplicates are dropped.
    fn new_findings(&self, pipeline: &Pipeline, text: &str) -> Result<Vec<Finding>, ScreenError> {
        let mut findings: Vec<Finding> = pipeline
            .findings(text)?
            .into_iter()
            .map(|mut f| {
                f.evidence.start += self.transcript_chars;
                f.evidence.end += self.transcript_chars;
                f
            })
            .collect();
        if self.carried.is_empty() {
            return Ok(findings);
        }
        let carried_chars = self.carried.chars().count();
        let combined = format!("{}{text}", self.carried);
        let shift = self.transcript_chars - carried_chars;
        for mut f in pipeline.findings(&combined)? {
            if f.evidence.end <= carried_chars {
                continue;
            }
            f.evidence.start += shift;
            f.evidence.end += shift;
            let overlapping = findings.iter_mut().find(|g| {
                g.evidence.entry_id == f.evidence.entry_id
                    && g.evidence.start < f.evidence.end
                    && f.evidence.start < g.evidence.end
            });
            match overlapping {
                // The same entry on overlapping words: keep the longer quote (ぶっ|殺す).
                Some(g)
                    if f.evidence.end - f.evidence.start > g.evidence.end - g.evidence.start =>
                {
                    *g = f
                }
                Some(_) => {}
                None => findings.push(f),
            }
        }
        Ok(findings)
    }

    fn screen_interim(
        &mut self,
        services: Services<'_>,
        segment: &SegmentIn,
    ) -> Result<SegmentOutcome, ScreenError> {
        let findings = self.new_findings(services.pipeline, &segment.text)?;
        let mut outcome = SegmentOutcome::default();
        for d in group(findings.into_iter().filter(|f| !f.track_only)) {
            let already =
                self.categories.get(&d.category).is_some_and(|s| s.severity >= d.severity)
                    || self.pending.iter().any(|p| p.category == d.category);
            if already || self.pending.len() >= MAX_PENDING_PROVISIONAL {
                continue;
            }
            let alert =
                Arc::new(self.alert(services.ids, segment.seq, d, AlertStatus::Provisional, None));
            self.pending.push(Arc::clone(&alert));
            outcome.provisional.push(alert);
        }
        Ok(outcome)
    }

    fn screen_final(
        &mut self,
        services: Services<'_>,
        segment: &SegmentIn,
    ) -> Result<SegmentOutcome, ScreenError> {
        let mut findings = self.new_findings(services.pipeline, &segment.text)?;
        self.carry(&segment.text);
        findings.extend(self.conduct_over_time(services.callers, &findings, segment.end_ms));
        let mut detections = group(findings.into_iter().filter(|f| !f.track_only));
        let mut outcome = SegmentOutcome::default();

        // The final text decides every provisional alert raised from the interims before it.
        for pending in std::mem::take(&mut self.pending) {
            let confirmed = detections.iter().position(|d| d.category == pending.category);
            let mut alert = (*pending).clone();
            match confirmed {
                Some(i) => {
                    let d = detections.remove(i);
                    self.remember_evidence(d.category, &d.evidence);
                    alert.status = AlertStatus::Confirmed;
                    alert.seq = segment.seq;
                    alert.severity = alert.severity.max(d.severity);
                    alert.evidence = d.evidence;
                    self.confirm(&mut alert, segment.end_ms);
                    let alert = Arc::new(alert);
                    outcome.alerts.push(Arc::clone(&alert));
                    outcome.updates.push(alert);
                }
                None => {
                    alert.status = AlertStatus::Retracted;
                    outcome.updates.push(Arc::new(alert));
                }
            }
        }

        for d in detections {
            let fresh = d.evidence.iter().any(|e| {
                !self.seen_evidence.contains(&(
                    d.category,
                    e.entry_id.clone(),
                    e.normalized.clone(),
                ))
            });
            if !fresh {
                continue; // the same words again: one alert per (category, evidence)
            }
            let previous = match self.categories.get(&d.category) {
                Some(state) if d.severity > state.severity => Some(state.alert_id.clone()),
                Some(state)
                    if segment.end_ms.saturating_sub(state.at_ms)
                        < self.policy.cooldown.as_millis() as u64 =>
                {
                    continue; // cooling down
                }
                _ => None,
            };
            self.remember_evidence(d.category, &d.evidence);
            let mut alert =
                self.alert(services.ids, segment.seq, d, AlertStatus::Confirmed, previous);
            self.confirm(&mut alert, segment.end_ms);
            outcome.alerts.push(Arc::new(alert));
        }
        Ok(outcome)
    }

    /// Appends final text to the transcript and keeps what the next segment needs.
    fn carry(&mut self, text: &str) {
        self.transcript_chars += text.chars().count();
        self.carried.push_str(text);
        if let Some(i) = self.carried.rfind(SENTENCE_BREAKS) {
            let after = i + self.carried[i..].chars().next().map_or(0, char::len_utf8);
            self.carried.drain(..after);
        }
        let chars = self.carried.chars().count();
        if chars > MAX_CARRIED_CHARS {
            let cut =
                self.carried.char_indices().nth(chars - MAX_CARRIED_CHARS).map_or(0, |(i, _)| i);
            self.carried.drain(..cut);
        }
    }

    /// PERSISTENCE and RESTRAINT findings from the families this final segment raised.
    ///
    /// A family is counted once per distinct span of words: saying the same demand twice in
    /// one segment counts twice, while the rest of a phrase that a segment boundary split
    /// (土下座し|ろ) continues the span already counted. So the count does not depend on where
    /// ASR cut the segments.
    fn conduct_over_time(
        &mut self,
        callers: &dyn CallState,
        findings: &[Finding],
        end_ms: u64,
    ) -> Vec<Finding> {
        let mut ordered: Vec<&Finding> = findings.iter().collect();
        ordered.sort_by_key(|f| (f.evidence.start, f.evidence.end));
        let mut raised_now: BTreeMap<&str, (&Finding, u32, crate::callers::Earlier)> =
            BTreeMap::new();
        for f in ordered {
            let counted = self.family_counts.entry(f.family.clone()).or_default();
            if f.evidence.start < counted.1 {
                counted.1 = counted.1.max(f.evidence.end);
                continue; // the same words as a span already counted
            }
            counted.0 += 1;
            counted.1 = f.evidence.end;
            let count = counted.0;
            let earlier = if self.info.customer_id.is_empty() {
                crate::callers::Earlier::default()
            } else {
                callers.record(
                    &self.info.tenant_id,
                    &self.info.customer_id,
                    &self.info.conversation_id,
                    &f.family,
                    !f.track_only,
                )
            };
            // Quote the words that reached the threshold, not a later repeat in the segment.
            let threshold_reached = raised_now
                .get(f.family.as_str())
                .is_some_and(|(_, c, _)| *c >= self.policy.persistence_repeats);
            if !threshold_reached {
                raised_now.insert(f.family.as_str(), (f, count, earlier));
            }
        }
        let threshold = self.policy.persistence_repeats;
        let duration_ms = end_ms.saturating_sub(self.first_start_ms.unwrap_or(0));
        let mut out = Vec::new();
        for (family, (finding, count, earlier)) in raised_now {
            let why = if count >= threshold {
                Some(format!("同じ要求・言動({family})がこの通話で{count}回目"))
            } else if earlier.contact_number >= self.policy.repeat_contacts
                && earlier.alerted_before
            {
                Some(format!(
                    "{}回目の問い合わせで、以前の問い合わせで警告済みの要求({family})を繰り返している",
                    earlier.contact_number
                ))
            } else if count + earlier.family_count >= threshold {
                Some(format!(
                    "同じ要求・言動({family})が{}時間以内の問い合わせで通算{}回目",
                    self.policy.repeat_window.as_secs() / 3600,
                    count + earlier.family_count
                ))
            } else {
                None
            };
            if let Some(why) = why {
                out.push(derived(Category::Persistence, Severity::Medium, finding, why));
            }
            if duration_ms >= self.policy.restraint_after.as_millis() as u64 && count >= 2 {
                let why = format!(
                    "通話が{}分を超えても同じ要求({family})を続けている",
                    duration_ms / 60_000
                );
                out.push(derived(Category::Restraint, Severity::High, finding, why));
            }
        }
        out
    }

    fn remember_evidence(&mut self, category: Category, evidence: &[Evidence]) {
        for e in evidence {
            if self.seen_evidence.len() < MAX_SEEN_EVIDENCE {
                self.seen_evidence.insert((category, e.entry_id.clone(), e.normalized.clone()));
            }
        }
    }

    /// Records a confirmed alert in the conversation's state and stamps the risk score on it.
    fn confirm(&mut self, alert: &mut Alert, at_ms: u64) {
        self.risk = 1.0 - (1.0 - self.risk) * (1.0 - risk_weight(alert.severity));
        alert.risk_score = self.risk;
        self.peak = self.peak.max(Some(alert.severity));
        if self.confirmed_ids.len() < MAX_SUMMARY_IDS {
            self.confirmed_ids.push(alert.alert_id.clone());
        }
        self.categories.insert(
            alert.category,
            CategoryState { alert_id: alert.alert_id.clone(), severity: alert.severity, at_ms },
        );
    }

    fn alert(
        &self,
        ids: &AlertIds,
        seq: u64,
        d: Detection,
        status: AlertStatus,
        previous_alert_id: Option<String>,
    ) -> Alert {
        Alert {
            alert_id: ids.next_id(),
            conversation_id: self.info.conversation_id.clone(),
            tenant_id: self.info.tenant_id.clone(),
            queue: self.info.queue.clone(),
            agent_id: self.info.agent_id.clone(),
            seq,
            category: d.category,
            severity: d.severity,
            evidence: d.evidence,
            created_at: SystemTime::now(),
            status,
            previous_alert_id,
            risk_score: self.risk,
        }
    }

    /// The conversation's summary, for when it ends; outstanding provisional alerts are
    /// returned retracted (no final text ever bore them out).
    pub fn finish(&mut self, reason: &'static str) -> (Summary, Vec<Arc<Alert>>) {
        let retracted = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|p| {
                let mut a = (*p).clone();
                a.status = AlertStatus::Retracted;
                Arc::new(a)
            })
            .collect();
        let summary = Summary {
            conversation_id: self.info.conversation_id.clone(),
            tenant_id: self.info.tenant_id.clone(),
            queue: self.info.queue.clone(),
            categories: self.categories.keys().copied().collect(),
            peak_severity: self.peak,
            alert_ids: self.confirmed_ids.clone(),
            duration_ms: self.last_end_ms.saturating_sub(self.first_start_ms.unwrap_or(0)),
            segments: self.segments,
            risk_score: self.risk,
            reason,
        };
        (summary, retracted)
    }
}

/// A finding raised by conduct over time, quoting the words that tipped it.
fn derived(category: Category, severity: Severity, from: &Finding, reason: String) -> Finding {
    Finding {
        category,
        severity,
        family: from.family.clone(),
        track_only: false,
        evidence: Evidence { reason, ..from.evidence.clone() },
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::callers::CallerHistory;
    use crate::dictionary::Lexicon;
    use crate::pipeline::matcher::Matcher;
    use crate::pipeline::segment::JapaneseSegmenter;

    const ENTRIES: &str = "\
attack.kill\tATTACK\tCRITICAL\tkill\t殺す|ぶっ殺す\t-\t殺害予告
attack.baka\tATTACK\tMEDIUM\tinsult\t馬鹿\t-\t侮辱
dogeza.demand\tDOGEZA\tHIGH\tdogeza\t土下座しろ\t-\t土下座要求
track.visit\tPERSISTENCE\tLOW\tsame-day-visit\t今日来て|今日中に来て\ttrack\t当日訪問の要求
";

    fn pipeline() -> &'static Pipeline {
        static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
        PIPELINE.get_or_init(|| {
            let lexicon = Lexicon::parse_files([(Path::new("test.tsv"), ENTRIES)]).expect("valid");
            let matcher =
                Matcher::build(lexicon, JapaneseSegmenter::try_new().expect("dictionary"))
                    .expect("builds");
            Pipeline::new(matcher)
        })
    }

    fn info(customer: &str, conversation: &str) -> ConversationInfo {
        ConversationInfo {
            conversation_id: conversation.into(),
            tenant_id: "t".into(),
            customer_id: customer.into(),
            queue: String::new(),
            agent_id: String::new(),
            started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        }
    }

    fn final_seg(seq: u64, text: &str, at_ms: u64) -> SegmentIn {
        SegmentIn {
            seq,
            speaker: Speaker::Customer,
            text: text.into(),
            is_final: true,
            start_ms: at_ms,
            end_ms: at_ms + 1000,
        }
    }

    struct Harness {
        ids: AlertIds,
        callers: CallerHistory,
    }

    impl Harness {
        fn new() -> Self {
            Self { ids: AlertIds::default(), callers: CallerHistory::default() }
        }
        fn services(&self) -> Services<'_> {
            Services { pipeline: pipeline(), ids: &self.ids, callers: &self.callers }
        }
        fn open(&self, customer: &str, id: &str) -> Conversation {
            Conversation::open(info(customer, id), TenantPolicy::default(), &self.callers)
        }
    }

    /// Per category: the highest confirmed severity and where its first evidence starts (in
    /// transcript chars), for a sequence of finals.
    ///
    /// Evidence *ends* are not compared: a segment that stops inside a phrase (…土下座し|ろ…)
    /// already matches the phrase by its base form, and streaming must alert then rather than
    /// wait for the next segment; the whole text quotes the longer phrase.
    fn alerts_for(parts: &[String]) -> BTreeMap<Category, (Severity, usize)> {
        let h = Harness::new();
        let mut c = h.open("", "c");
        let mut out: BTreeMap<Category, (Severity, usize)> = BTreeMap::new();
        for (i, part) in parts.iter().enumerate() {
            let outcome = c
                .screen(h.services(), &final_seg(i as u64 + 1, part, i as u64 * 1000))
                .expect("screen");
            for a in outcome.alerts {
                let start = a.evidence.iter().map(|e| e.start).min().expect("evidence");
                let slot = out.entry(a.category).or_insert((a.severity, start));
                *slot = (slot.0.max(a.severity), slot.1.min(start));
            }
        }
        out
    }

    /// A phrase split across two finals is found, quoted across the split.
    #[test]
    fn split_phrase_is_found() {
        let h = Harness::new();
        let mut c = h.open("", "c");
        let first = c.screen(h.services(), &final_seg(1, "うるせえなぶっこ", 0)).expect("screen");
        assert!(first.alerts.is_empty());
        let second = c.screen(h.services(), &final_seg(2, "ろすぞおまえ", 1000)).expect("screen");
        let a = &second.alerts[0];
        assert_eq!((a.category, a.severity), (Category::Attack, Severity::Critical));
        assert_eq!(a.evidence[0].quote, "ころす", "help: the quote spans the split");
        assert_eq!(
            (a.evidence[0].start, a.evidence[0].end),
            (7, 10),
            "help: offsets count the transcript"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// For any text built from lexicon words and filler, and any split of it into finals,
        /// the alerts (category, severity, transcript span) equal those of the whole text.
        #[test]
        fn any_split_gives_the_same_alerts(
            words in proptest::collection::vec(
                prop::sample::select(vec!["ぶっ殺す", "土下座しろ", "馬鹿", "あのー", "テレビが", "映らない", "ですけど", "おい"]),
                1..8,
            ),
            cuts in proptest::collection::vec(0usize..64, 0..4),
        ) {
            let text: String = words.concat();
            let chars: Vec<char> = text.chars().collect();
            let mut points: Vec<usize> = cuts.into_iter().map(|c| c % (chars.len() + 1)).collect();
            points.sort_unstable();
            points.dedup();
            let mut parts = Vec::new();
            let mut last = 0;
            for p in points.into_iter().chain([chars.len()]) {
                if p > last {
                    parts.push(chars[last..p].iter().collect::<String>());
                    last = p;
                }
            }
            prop_assert_eq!(alerts_for(&parts), alerts_for(std::slice::from_ref(&text)), "split {:?}", parts);
        }
    }

    /// An interim raises a provisional alert; the final that revises it retracts it.
    #[test]
    fn interim_is_retracted_by_a_different_final() {
        let h = Harness::new();
        let mut c = h.open("", "c");
        let interim = SegmentIn { is_final: false, ..final_seg(1, "らいげつから馬鹿", 0) };
        let out = c.screen(h.services(), &interim).expect("screen");
        assert_eq!(out.provisional.len(), 1);
        assert_eq!(out.provisional[0].status, AlertStatus::Provisional);
        let id = out.provisional[0].alert_id.clone();
        let out = c.screen(h.services(), &final_seg(2, "来月からバカンスです", 0)).expect("screen");
        assert!(out.alerts.is_empty());
        assert_eq!(out.updates.len(), 1);
        assert_eq!(
            (out.updates[0].alert_id.as_str(), out.updates[0].status),
            (id.as_str(), AlertStatus::Retracted)
        );
        assert_eq!(c.finish("end").0.peak_severity, None, "help: a retracted alert scores nothing");
    }

    /// An interim's alert confirmed by the final keeps its id and counts once.
    #[test]
    fn interim_is_confirmed_by_the_final() {
        let h = Harness::new();
        let mut c = h.open("", "c");
        let out = c
            .screen(h.services(), &SegmentIn { is_final: false, ..final_seg(1, "土下座し", 0) })
            .expect("screen");
        let id = out.provisional[0].alert_id.clone();
        let out = c.screen(h.services(), &final_seg(2, "土下座しろよ", 0)).expect("screen");
        assert_eq!(out.alerts.len(), 1);
        assert_eq!(
            (out.alerts[0].alert_id.as_str(), out.alerts[0].status),
            (id.as_str(), AlertStatus::Confirmed)
        );
        assert_eq!(out.alerts[0].seq, 2, "help: confirmed at the final's seq");
        assert_eq!(out.updates[0].alert_id, id);
        assert_eq!(c.finish("end").0.alert_ids, vec![id]);
    }

    /// The same words again raise nothing; a different insult within the cooldown neither;
    /// a higher severity escalates and names the alert it escalates.
    #[test]
    fn hygiene_dedupe_cooldown_escalation() {
        let h = Harness::new();
        let mut c = h.open("", "c");
        let first = c.screen(h.services(), &final_seg(1, "馬鹿", 0)).expect("screen").alerts;
        assert_eq!(first.len(), 1);
        assert!(
            c.screen(h.services(), &final_seg(2, "馬鹿", 1000)).expect("screen").alerts.is_empty()
        );
        let escalated =
            c.screen(h.services(), &final_seg(3, "殺すぞ", 2000)).expect("screen").alerts;
        assert_eq!(escalated[0].severity, Severity::Critical);
        assert_eq!(escalated[0].previous_alert_id.as_deref(), Some(first[0].alert_id.as_str()));
        assert!(escalated[0].risk_score > first[0].risk_score);
    }

    /// A demand that is fine once becomes PERSISTENCE at the policy's 4th time, in new words.
    #[test]
    fn persistence_on_the_fourth_demand() {
        let h = Harness::new();
        let mut c = h.open("", "c");
        let lines = [
            "今日来てもらえませんか",
            "今日中に来てほしい",
            "だから今日来てって",
            "今日来てくださいって",
        ];
        let mut raised = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let out = c
                .screen(h.services(), &final_seg(i as u64 + 1, line, i as u64 * 10_000))
                .expect("screen");
            raised.push(out.alerts.iter().map(|a| a.category).collect::<Vec<_>>());
        }
        assert_eq!(
            raised[..3],
            [vec![], vec![], vec![]],
            "help: three requests are not harassment"
        );
        assert_eq!(raised[3], vec![Category::Persistence]);
    }

    /// A conversation restored from a snapshot (through JSON, as Redis stores it) continues
    /// exactly as the original: the fourth demand is PERSISTENCE on the "other node" too, a
    /// repeated seq is refused, and the same words do not alert again.
    #[test]
    fn snapshot_continues_on_another_node() {
        let h = Harness::new();
        let mut original = h.open("", "c");
        let lines = ["今日来てもらえませんか", "今日中に来てほしい", "だから今日来てって"];
        for (i, line) in lines.iter().enumerate() {
            original
                .screen(h.services(), &final_seg(i as u64 + 1, line, i as u64 * 10_000))
                .expect("screen");
        }
        original.screen(h.services(), &final_seg(4, "土下座しろ", 30_000)).expect("screen");
        let json = serde_json::to_string(&original.snapshot()).expect("snapshot serialises");
        let other = Harness::new();
        let mut moved = other.open("", "c");
        assert!(moved.restore(serde_json::from_str(&json).expect("snapshot parses")));
        assert_eq!(moved.snapshot(), original.snapshot(), "help: nothing lost on the way");
        assert!(moved.screen(other.services(), &final_seg(4, "はい", 40_000)).is_err());
        let next = final_seg(5, "今日来てくださいって土下座しろ", 40_000);
        let want = original.screen(h.services(), &next).expect("original");
        let got = moved.screen(other.services(), &next).expect("moved");
        let categories =
            |o: &SegmentOutcome| o.alerts.iter().map(|a| a.category).collect::<Vec<_>>();
        assert_eq!(categories(&got), vec![Category::Persistence]);
        assert_eq!(categories(&got), categories(&want));
        let mut stranger = other.open("", "d");
        assert!(!stranger.restore(original.snapshot()), "help: another conversation's snapshot");
    }

    /// Past the time limit, pressing the same demand again is RESTRAINT.
    #[test]
    fn restraint_after_the_time_limit() {
        let h = Harness::new();
        let mut c = h.open("", "c");
        c.screen(h.services(), &final_seg(1, "今日来てください", 0)).expect("screen");
        let late = c
            .screen(h.services(), &final_seg(2, "今日来てって言ってるの", 61 * 60_000))
            .expect("screen");
        assert!(late.alerts.iter().any(|a| a.category == Category::Restraint), "help: {late:?}");
    }

    /// A third contact that repeats a demand alerted in an earlier contact is PERSISTENCE.
    #[test]
    fn repeat_caller_across_contacts() {
        let h = Harness::new();
        let mut first = h.open("cust", "c1");
        assert!(
            !first
                .screen(h.services(), &final_seg(1, "土下座しろ", 0))
                .expect("s")
                .alerts
                .is_empty()
        );
        let mut second = h.open("cust", "c2");
        second.screen(h.services(), &final_seg(1, "こんにちは", 0)).expect("s");
        let mut third = h.open("cust", "c3");
        let out = third.screen(h.services(), &final_seg(1, "土下座しろよ", 0)).expect("s");
        assert!(out.alerts.iter().any(|a| a.category == Category::Persistence), "help: {out:?}");
    }

    /// A seq that does not increase is refused and changes nothing.
    #[test]
    fn seq_must_increase() {
        let h = Harness::new();
        let mut c = h.open("", "c");
        c.screen(h.services(), &final_seg(2, "こんにちは", 0)).expect("screen");
        let err = c.screen(h.services(), &final_seg(2, "馬鹿", 0)).expect_err("repeat seq");
        assert!(err.to_string().contains("segment.seq"));
        assert_eq!(c.finish("end").0.segments, 1);
    }
}
