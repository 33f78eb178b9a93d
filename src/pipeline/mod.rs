//! The screening pipeline: normalise → tokenise → match → detections, for one piece of text.
//!
//! ```text
//! text ──normalize──▶ Normalized (text + offset map back to the original)
//!      ──segment────▶ words (surface, base form, reading)     [inside Matcher::find]
//!      ──matcher────▶ hits (entry, normalised span, severity after context rules)
//!      ──screen─────▶ Detection per category, evidence quoted from the ORIGINAL text
//! ```
//!
//! Everything here is synchronous and free of tokio: a segment takes tens of microseconds,
//! less than a task switch would be worth, so the gRPC handlers call it inline (the rule of
//! mini-redis's `db.rs`: no `spawn_blocking` until the benches say so).

pub mod matcher;
pub mod normalize;
pub mod segment;

use std::collections::BTreeMap;

use crate::error::ScreenError;
use crate::policy::{Category, Severity};
use matcher::Matcher;
use normalize::normalize;

/// The words behind a detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    /// The exact original text of the span.
    pub quote: String,
    /// Start of the span in the original text, in chars (Unicode scalars).
    pub start: usize,
    /// End of the span (exclusive), in chars.
    pub end: usize,
    /// The span as normalised (what the lexicon matched).
    pub normalized: String,
    /// Id of the lexicon entry that matched.
    pub entry_id: String,
    /// Why: the entry's rationale, plus any context rule that raised the severity.
    pub reason: String,
}

/// One category found in a text: its severity and the evidence for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detection {
    /// The policy category.
    pub category: Category,
    /// The highest severity among the evidence.
    pub severity: Severity,
    /// Every distinct span that raised the category, in text order.
    pub evidence: Vec<Evidence>,
}

/// The pipeline for one lexicon; cheap to clone.
#[derive(Debug, Clone)]
pub struct Pipeline {
    matcher: Matcher,
}

impl Pipeline {
    /// Wraps a built matcher.
    pub fn new(matcher: Matcher) -> Self {
        Self { matcher }
    }

    /// The matcher this pipeline screens with.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Screens one customer text; at most one detection per category, ordered by category.
    /// Entries flagged `track` (they only feed persistence) raise nothing here.
    ///
    /// # Errors
    /// [`ScreenError::Internal`] if the tokeniser fails, which no known input causes.
    pub fn screen(&self, text: &str) -> Result<Vec<Detection>, ScreenError> {
        Ok(group(self.findings(text)?.into_iter().filter(|f| !f.track_only)))
    }

    /// Every lexicon hit in one text, `track` entries included, with evidence quoted from
    /// `text` (offsets are chars of `text`).
    ///
    /// # Errors
    /// [`ScreenError::Internal`] if the tokeniser fails.
    pub fn findings(&self, text: &str) -> Result<Vec<Finding>, ScreenError> {
        let normalized = normalize(text);
        let found = self
            .matcher
            .find(normalized.as_str())
            .map_err(|e| ScreenError::Internal(e.to_string()))?;
        if found.hits.is_empty() {
            return Ok(Vec::new());
        }
        let original: Vec<char> = text.chars().collect();
        Ok(found
            .hits
            .into_iter()
            .map(|hit| {
                let entry = &self.matcher.entries()[hit.entry];
                let span = normalized.original_chars(hit.bytes.clone());
                let reason = match &hit.raised_by {
                    Some(rule) => format!("{} (severity raised by {rule})", entry.rationale),
                    None => entry.rationale.clone(),
                };
                Finding {
                    category: entry.category,
                    severity: hit.severity,
                    family: entry.family.clone(),
                    track_only: entry.flags.track,
                    evidence: Evidence {
                        quote: original[span.clone()].iter().collect(),
                        start: span.start,
                        end: span.end,
                        normalized: normalized.as_str()[hit.bytes].to_owned(),
                        entry_id: entry.id.clone(),
                        reason,
                    },
                }
            })
            .collect())
    }
}

/// One lexicon hit with its evidence, before grouping by category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The entry's category.
    pub category: Category,
    /// Severity after context rules.
    pub severity: Severity,
    /// The entry's family (the same demand or abuse, for persistence).
    pub family: String,
    /// The entry only counts toward persistence and raises no alert itself.
    pub track_only: bool,
    /// The words.
    pub evidence: Evidence,
}

/// Groups findings into one detection per category: the highest severity, and the evidence
/// with nested spans dropped (土下座し inside 土下座してでも謝れ: the supervisor needs the
/// longest quote once).
pub fn group(findings: impl IntoIterator<Item = Finding>) -> Vec<Detection> {
    let mut by_category: BTreeMap<Category, Detection> = BTreeMap::new();
    for f in findings {
        let detection = by_category.entry(f.category).or_insert_with(|| Detection {
            category: f.category,
            severity: f.severity,
            evidence: Vec::new(),
        });
        detection.severity = detection.severity.max(f.severity);
        detection.evidence.push(f.evidence);
    }
    let mut detections: Vec<Detection> = by_category.into_values().collect();
    for d in &mut detections {
        let all: Vec<(usize, usize)> = d.evidence.iter().map(|e| (e.start, e.end)).collect();
        d.evidence.retain(|e| {
            !all.iter().any(|&(s, t)| (s, t) != (e.start, e.end) && s <= e.start && e.end <= t)
        });
        d.evidence.sort_by_key(|e| (e.start, e.end));
        d.evidence.dedup_by_key(|e| (e.start, e.end));
    }
    detections
}
