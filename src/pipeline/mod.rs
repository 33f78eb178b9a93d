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

pub mod masks;
pub mod matcher;
pub mod normalize;
pub mod pii;
pub mod segment;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use crate::error::ScreenError;
use crate::policy::{Category, Severity};
use crate::telemetry::Stage;
use masks::MaskFill;
use matcher::Matcher;
use normalize::{MASK, Normalized, normalize};

/// Bytes of the mask char ○ in UTF-8.
const MASK_BYTES: usize = MASK.len_utf8();

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
    /// The screened text around the span (up to [`CONTEXT_CHARS`] either side), so a
    /// supervisor reads the quote in context.
    pub context: String,
    /// Where the quote starts within `context`, in chars.
    pub context_start: usize,
}

/// How many chars of the screened text evidence carries on each side of its quote: about a
/// phrase, enough to read a quote in context without shipping the whole turn.
pub const CONTEXT_CHARS: usize = 20;

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
    masks: Arc<MaskFill>,
    mask_personal_data: bool,
}

impl Pipeline {
    /// Wraps a built matcher; evidence has personal data masked ([`pii`]).
    pub fn new(matcher: Matcher) -> Self {
        let masks = Arc::new(MaskFill::from_lexicon(matcher.lexicon()));
        Self { matcher, masks, mask_personal_data: true }
    }

    /// The same pipeline (sharing its automaton), masking personal data in evidence or not.
    pub fn masking_personal_data(&self, mask: bool) -> Self {
        Self { mask_personal_data: mask, ..self.clone() }
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
        let normalized = self.prepare(text)?;
        let found = self
            .matcher
            .find(normalized.as_str())
            .map_err(|e| ScreenError::Internal(e.to_string()))?;
        if found.hits.is_empty() {
            return Ok(Vec::new());
        }
        // Hits give chars of `text`; quotes and context are cut by bytes. Context is cut from
        // the whole text masked at once (masking keeps every char, and every byte, in place),
        // so a phone number cut off at the window's edge is still masked.
        let starts = char_starts(text);
        let masked = self.personal_data_masked(text);
        let chars = starts.len() - 1;
        Ok(found
            .hits
            .into_iter()
            .map(|hit| {
                let entry = &self.matcher.entries()[hit.entry];
                let span = normalized.original_chars(hit.bytes.clone());
                let context =
                    span.start.saturating_sub(CONTEXT_CHARS)..(span.end + CONTEXT_CHARS).min(chars);
                let reason = match &hit.raised_by {
                    Some(rule) => format!("{} (severity raised by {rule})", entry.rationale),
                    None => entry.rationale.to_string(),
                };
                let quote = &text[starts[span.start]..starts[span.end]];
                let normalized = &normalized.as_str()[hit.bytes];
                Finding {
                    category: entry.category,
                    severity: hit.severity,
                    family: entry.family.to_string(),
                    track_only: entry.flags.track,
                    evidence: Evidence {
                        quote: self.personal_data_masked(quote).into_owned(),
                        start: span.start,
                        end: span.end,
                        normalized: self.personal_data_masked(normalized).into_owned(),
                        entry_id: entry.id.clone(),
                        reason,
                        context: masked[starts[context.start]..starts[context.end]].to_owned(),
                        context_start: span.start - context.start,
                    },
                }
            })
            .collect())
    }
}

/// The byte offset of every char of `text`, and its length last: `starts[i]..starts[j]` are
/// chars `i..j`.
fn char_starts(text: &str) -> Vec<usize> {
    text.char_indices().map(|(at, _)| at).chain([text.len()]).collect()
}

impl Pipeline {
    fn personal_data_masked<'t>(&self, text: &'t str) -> Cow<'t, str> {
        if self.mask_personal_data { pii::mask(text) } else { Cow::Borrowed(text) }
    }

    /// Normalises `text`, reads katakana lookalike kanji as katakana (バ力 → バカ) and fills
    /// fuseji masks: exactly the text the matcher screens.
    ///
    /// # Errors
    /// [`ScreenError::Internal`] if the tokeniser fails.
    pub fn prepare(&self, text: &str) -> Result<Normalized, ScreenError> {
        let started = Instant::now();
        let mut normalized = normalize(text);
        Stage::Normalize.record(started);
        for (at, katakana) in masks::katakana_lookalikes(normalized.as_str()) {
            if let Some(folded) = normalized.with_char_at(at, katakana) {
                normalized = folded;
            }
        }
        self.fill_masks(normalized)
    }

    /// Fills each lone fuseji mask (馬○) with the character that makes a lexicon entry hit
    /// through it (see [`masks`]); masks nothing explains stay. Among fills, a hit that spans
    /// both neighbours of the mask wins (馬鹿野郎 over 豚野郎 for 馬○野郎), then the more
    /// severe, then a fill in the neighbour's script (クソ over クず).
    fn fill_masks(&self, mut normalized: Normalized) -> Result<Normalized, ScreenError> {
        for at in MaskFill::masks(normalized.as_str()) {
            let window = MaskFill::trial_window(normalized.as_str(), at);
            let mask = at - window.start;
            let text = normalized.as_str();
            let left = text[window.start..at].chars().next_back().map_or(0, char::len_utf8);
            let right = text[at..window.end].chars().nth(1).map_or(0, char::len_utf8);
            // (neighbours spanned, severity) of the best hit through the mask.
            let score = |text: &str| {
                let found = self
                    .matcher
                    .find(&text[window.clone()])
                    .map_err(|e| ScreenError::Internal(e.to_string()))?;
                Ok::<_, ScreenError>(
                    found
                        .hits
                        .iter()
                        .filter(|h| h.bytes.start <= mask && mask < h.bytes.end)
                        .map(|h| {
                            let spans_left = left > 0 && h.bytes.start + left <= mask;
                            let spans_right = right > 0 && mask + MASK_BYTES + right <= h.bytes.end;
                            (u8::from(spans_left) + u8::from(spans_right), h.severity)
                        })
                        .max(),
                )
            };
            if score(text)?.is_some() {
                continue; // the lexicon spells this mask itself (○ね)
            }
            let script = text[..at].chars().next_back().map(MaskFill::script);
            let mut best: Option<((u8, Severity, bool), Normalized)> = None;
            for c in self.masks.candidates(text, at) {
                let Some(trial) = normalized.with_char_at(at, c) else { continue };
                if let Some((spanned, severity)) = score(trial.as_str())? {
                    let key = (spanned, severity, script == Some(MaskFill::script(c)));
                    if best.as_ref().is_none_or(|(k, _)| key > *k) {
                        best = Some((key, trial));
                    }
                }
            }
            if let Some((_, filled)) = best {
                normalized = filled;
            }
        }
        Ok(normalized)
    }
}

/// The pipeline each tenant screens with: one shared pipeline, plus one for every tenant whose
/// policy adds or disables lexicon entries (`lexicon_overlay`, `lexicon_disable`) or masks
/// personal data differently (`mask_personal_data`).
#[derive(Debug, Clone)]
pub struct Pipelines {
    shared: Pipeline,
    tenants: HashMap<String, Pipeline>,
}

impl Pipelines {
    /// The shared pipeline plus per-tenant ones.
    pub fn new(shared: Pipeline, tenants: HashMap<String, Pipeline>) -> Self {
        Self { shared, tenants }
    }

    /// The pipeline for `tenant_id`: its own when it has an overlay, the shared one otherwise.
    pub fn for_tenant(&self, tenant_id: &str) -> &Pipeline {
        self.tenants.get(tenant_id).unwrap_or(&self.shared)
    }

    /// The shared pipeline (tenants without an overlay).
    pub fn shared(&self) -> &Pipeline {
        &self.shared
    }

    /// How many tenants have a pipeline of their own.
    pub fn tenant_count(&self) -> usize {
        self.tenants.len()
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;

    use super::*;
    use crate::dictionary::Lexicon;
    use crate::pipeline::segment::JapaneseSegmenter;

    /// The repo's own lexicon, built once for all tests here.
    fn pipeline() -> &'static Pipeline {
        static PIPELINE: OnceLock<Pipeline> = OnceLock::new();
        PIPELINE.get_or_init(|| {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dictionaries");
            let lexicon = Lexicon::load_dir(&dir).expect("repo lexicon loads");
            let segmenter = JapaneseSegmenter::try_new().expect("dictionary");
            Pipeline::new(Matcher::build(lexicon, segmenter).expect("lexicon compiles"))
        })
    }

    /// (quote, normalised, entry) of every piece of evidence for `text`.
    fn evidence(text: &str) -> Vec<(String, String, String)> {
        let detections = pipeline().screen(text).expect("screen");
        detections
            .into_iter()
            .flat_map(|d| d.evidence)
            .map(|e| (e.quote, e.normalized, e.entry_id))
            .collect()
    }

    /// A lone mask is filled with the character the lexicon puts there; the quote keeps the
    /// original mask and the normalised form shows the fill.
    #[test]
    fn lone_masks_are_filled_from_the_lexicon() {
        for (text, quote, normalized) in [
            ("馬〇", "馬〇", "馬鹿"),
            ("バ〇じゃねえの", "バ〇", "バカ"),
            ("土下〇しろ", "土下〇しろ", "土下座しろ"),
            ("お前ぶっこ〇すぞ", "ぶっこ〇す", "ぶっころす"),
        ] {
            let found = evidence(text);
            assert!(
                found.iter().any(|(q, n, _)| q == quote && n == normalized),
                "help: {text:?} gave {found:?}"
            );
        }
    }

    /// The fill that spans both neighbours wins over one that only touches one side.
    #[test]
    fn fill_prefers_the_phrase_around_the_mask() {
        let found = evidence("馬○野郎");
        assert!(found.iter().any(|(_, n, _)| n == "馬鹿野郎"), "help: got {found:?}");
        assert!(found.iter().all(|(_, n, _)| !n.contains('豚')), "help: got {found:?}");
    }

    /// Redacted runs and masks nothing in the lexicon explains stay silent.
    #[test]
    fn unexplained_masks_stay_silent() {
        for text in ["○○様の件です", "回答は○です", "担当は×です", "〇〇株式会社の者です"]
        {
            assert_eq!(evidence(text), Vec::new(), "help: {text:?}");
        }
    }

    /// Phrasings written for these tests (dialect, keigo menace, disguises, other industries),
    /// not taken from any corpus: each raises its category.
    #[test]
    fn varied_phrasings_raise_their_category() {
        for (text, category) in [
            ("バ力じゃないの", Category::Attack),
            ("市ねよ", Category::Attack),
            ("くたばれ", Category::Attack),
            ("お前の家族も無事じゃ済まねえぞ", Category::Attack),
            ("覚悟しときや", Category::Intimidation),
            ("お宅の社長の家、知ってるんですよ", Category::Intimidation),
            ("誠意というものをお見せいただけると信じております", Category::ExcessiveDemand),
            ("あなたの顔写真、ツイッターに上げておきますね", Category::OnlineExposure),
            ("外人は日本語わかんねえのか", Category::DiscriminationSexual),
        ] {
            let found = pipeline().screen(text).expect("screen");
            assert!(found.iter().any(|d| d.category == category), "help: {text:?} gave {found:?}");
        }
    }

    /// Ordinary requests that share words with those entries stay silent.
    #[test]
    fn near_misses_stay_silent() {
        for text in [
            "もう覚悟はしていました",
            "家族が無事か心配です",
            "家の住所は知ってますよね、そこに送ってください",
            "誠意ある対応をお願いします",
            "ツイッターで障害情報を見ました",
            "日本語がわからない母の代わりに電話しています",
            "テレビ工事の日程を変えたい",
            "次はちゃんと直してくださいね",
        ] {
            assert_eq!(pipeline().screen(text).expect("screen"), Vec::new(), "help: {text:?}");
        }
    }

    /// A phone number inside the quoted words (and their context) is masked (offsets
    /// unchanged) unless the tenant turned masking off.
    #[test]
    fn evidence_masks_personal_data() {
        let text = "担当の名前と携帯090-1234-5678をネットに晒してやる";
        let quote = |p: &Pipeline| {
            let found = p.screen(text).expect("screen");
            let e = found.into_iter().flat_map(|d| d.evidence).next().expect("exposure threat");
            let original: String = text.chars().skip(e.start).take(e.end - e.start).collect();
            assert!(!p.mask_personal_data || !e.context.contains("1234"), "help: {:?}", e.context);
            (e.quote, original)
        };
        let (masked, original) = quote(pipeline());
        assert!(masked.contains("***-****-****"), "help: got {masked:?}");
        assert!(!masked.contains("1234"), "help: got {masked:?}");
        assert_eq!(masked.chars().count(), original.chars().count());
        let (plain, _) = quote(&pipeline().masking_personal_data(false));
        assert!(plain.contains("090-1234-5678"), "help: got {plain:?}");
    }
}
