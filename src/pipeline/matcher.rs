//! Matching: finds lexicon entries in a tokenised utterance with one Aho-Corasick automaton, and
//! applies the lexicon's context rules (negation, hypotheticals, second-person targeting,
//! allow-lists and legitimate-complaint forms).
//!
//! # How the automaton sees words
//!
//! Keyword screens that search raw text hit バカ inside バカンス and 殺 inside 殺菌. Here every
//! match starts and ends on a word boundary that lindera found, because the automaton never
//! searches raw text. It searches an *encoding of the token layers* of the utterance:
//!
//! 1. **Base-form layer.** Every base form (原形) that occurs in some lexicon pattern gets an id,
//!    and id `n` is written as the single Unicode scalar `U+F0000 + n` (a private-use plane, so
//!    it never collides with text; 4 bytes in UTF-8). A token whose base form is in no pattern is
//!    written as id 0, which no pattern contains. So 殺せ, 殺して and 殺されたいのか all write
//!    the scalar of 殺す, and the one pattern `殺す` finds them all. Because UTF-8 is
//!    self-synchronising and every token is exactly one scalar, a hit can only start and end
//!    between tokens.
//! 2. **Reading layer.** The katakana readings of the tokens, folded to hiragana and
//!    concatenated, so ころす, コロス and 殺す meet however the tokeniser split the kana. Here
//!    a hit must be re-aligned: it is kept only if its start and end are token starts/ends
//!    (ところすみません contains こ・ろ・す but not on boundaries) and it does not start on a
//!    particle or auxiliary verb.
//!
//! Both layers are concatenated into one haystack separated by U+0001, and every pattern
//! alternative of every entry and rule is compiled into both layers of *one* automaton.
//! The search is overlapping (`MatchKind::Standard`), unlike the usual dictionary search with
//! `LeftmostLongest`: context rules must see markers that overlap entry hits (お前 inside
//! お前殺すぞ), and we choose the longest evidence ourselves afterwards.
//!
//! Patterns go through the very same `normalize` and tokeniser as live text, so a lexicon
//! author writes natural Japanese and it matches the way customers speak it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::dictionary::{DictionaryError, Entry, Join, Lexicon, Origin, Pattern, RuleKind};
use crate::pipeline::normalize::{fold_kana, normalize};
use crate::pipeline::segment::{DictionaryWord, JapaneseSegmenter, SegmentError, Word};
use crate::policy::Severity;
use crate::telemetry::Stage;

/// First scalar of the base-form encoding (Supplementary Private Use Area-A).
const LEMMA_BASE: u32 = 0xF_0000;
/// Ids that fit in plane 15's private-use area; beyond it we continue in plane 16.
const PLANE_15_IDS: u32 = 0xFFFE;
/// First scalar of the second private-use plane.
const PLANE_16_BASE: u32 = 0x10_0000;
/// The most distinct base forms the encoding can hold (both private-use planes, less id 0).
pub const MAX_VOCABULARY: usize = 2 * PLANE_15_IDS as usize - 1;
/// Separates the two layers in the haystack; stripped from text by the normaliser.
const LAYER_SEPARATOR: char = '\u{1}';
/// Reading-layer patterns shorter than this (in chars) are too ambiguous to use: a single
/// kana matches everywhere. Their base-form layer still applies.
const MIN_READING_CHARS: usize = 2;

fn lemma_char(id: u32) -> char {
    let scalar =
        if id < PLANE_15_IDS { LEMMA_BASE + id } else { PLANE_16_BASE + (id - PLANE_15_IDS) };
    // Invariant: ids are < MAX_VOCABULARY (checked when the vocabulary grows), so the scalar
    // lies inside U+F0000..=U+FFFFD or U+100000..=U+10FFFD, all valid scalars.
    char::from_u32(scalar).expect("private-use scalar is valid")
}

/// Who owns a compiled pattern alternative: an entry or a context rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Entry(u32),
    Rule(u32),
}

/// One place an automaton pattern leads to: piece `piece` of `owner`.
#[derive(Debug, Clone, Copy)]
struct Target {
    owner: Owner,
    piece: u16,
}

/// One lexicon entry found in an utterance, after context rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Index of the entry in [`Matcher::entries`].
    pub entry: usize,
    /// Byte range of the evidence in the normalised text.
    pub bytes: Range<usize>,
    /// Severity after context rules.
    pub severity: Severity,
    /// The context rule that raised the severity, if one did.
    pub raised_by: Option<String>,
}

/// What matching one text found, including what context rules silenced (for `lexicon check`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    /// Entry hits that stand.
    pub hits: Vec<Hit>,
    /// Entry hits dropped by a rule: (entry index, byte range, rule id).
    pub silenced: Vec<(usize, Range<usize>, String)>,
}

/// The compiled lexicon: one automaton plus what each of its patterns means.
///
/// Cloning is cheap (an `Arc`), so every stream can hold the current matcher while a reload
/// builds the next one beside it.
#[derive(Clone, Debug)]
pub struct Matcher {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Tells this matcher's entries apart in the per-thread [`WORD_CACHE`].
    id: u64,
    automaton: AhoCorasick,
    /// `targets[pattern id]`: every (owner, piece) that this pattern string stands for,
    /// sorted by piece.
    targets: Vec<Vec<Target>>,
    vocabulary: HashMap<String, u32>,
    lexicon: Lexicon,
    segmenter: JapaneseSegmenter,
}

/// The two layers of one tokenisation (see the module doc), built word by word.
#[derive(Debug, Default)]
struct Layers {
    tokens: Vec<Token>,
    lemmas: String,
    readings: String,
}

impl Layers {
    /// Empty layers with room for a text of `text_bytes` bytes, so building them does not
    /// reallocate: at most one token per 3 bytes of (mostly CJK) text, 4 bytes per token in
    /// the base-form layer, and readings about as long as the text.
    fn with_capacity(text_bytes: usize) -> Self {
        let tokens = text_bytes / 3 + 1;
        Self {
            tokens: Vec::with_capacity(tokens),
            lemmas: String::with_capacity(4 * tokens),
            readings: String::with_capacity(text_bytes + text_bytes / 2),
        }
    }

    fn push(&mut self, vocabulary: &HashMap<String, u32>, w: &Word<'_>) {
        let key = lemma_key(w.base_form, w.part_of_speech);
        let id = vocabulary.get(&key).copied().unwrap_or(0);
        self.push_encoded(
            w.range.clone(),
            lemma_char(id),
            &fold_kana(w.reading),
            w.part_of_speech == "助詞",
            w.unknown,
        );
    }

    /// Pushes a dictionary word, from the per-thread cache when this matcher has seen its id
    /// on this thread before; returns whether it is a guessed kana run. Reading a word's
    /// details and keying its base form cost more than the rest of matching it, and a few
    /// thousand distinct words make up most speech.
    fn push_token(
        &mut self,
        inner: &Inner,
        cache: &mut WordCache,
        token: &mut DictionaryWord<'_, '_>,
    ) -> bool {
        let Some(word_id) = token.id() else {
            let w = token.word();
            self.push(&inner.vocabulary, &w);
            return w.is_guessed_kana_run();
        };
        let cached = cache.entry((inner.id, word_id)).or_insert_with(|| {
            let w = token.word();
            let id = inner.vocabulary.get(&lemma_key(w.base_form, w.part_of_speech));
            CachedWord {
                lemma: lemma_char(id.copied().unwrap_or(0)),
                reading: fold_kana(w.reading).into(),
                function_word: w.part_of_speech == "助詞",
                unknown: w.unknown,
                guessed_kana_run: w.is_guessed_kana_run(),
            }
        });
        self.push_encoded(
            token.range(),
            cached.lemma,
            &cached.reading,
            cached.function_word,
            cached.unknown,
        );
        cached.guessed_kana_run
    }

    fn push_encoded(
        &mut self,
        bytes: Range<usize>,
        lemma: char,
        reading: &str,
        function_word: bool,
        unknown: bool,
    ) {
        self.lemmas.push(lemma);
        let start = self.readings.len();
        self.readings.push_str(reading);
        self.tokens.push(Token {
            bytes,
            reading: start..self.readings.len(),
            function_word,
            unknown,
        });
    }
}

/// What matching needs of one dictionary word, derived once per thread and matcher.
#[derive(Debug)]
struct CachedWord {
    lemma: char,
    reading: Box<str>,
    function_word: bool,
    unknown: bool,
    guessed_kana_run: bool,
}

/// Words cached per thread before the cache starts over: about 3 MB at most, and far more
/// distinct words than a contact centre's speech uses between reloads.
const WORD_CACHE_WORDS: usize = 1 << 16;

/// Gives each built matcher its own key space in [`WORD_CACHE`].
static NEXT_MATCHER_ID: AtomicU64 = AtomicU64::new(0);

/// (matcher id, IPADIC word id) → the word as that matcher encodes it.
type WordCache = HashMap<(u64, u32), CachedWord>;

thread_local! {
    /// Per thread, so the screening path takes no lock.
    static WORD_CACHE: RefCell<WordCache> = RefCell::new(HashMap::new());
}

/// One token of the text being matched, reduced to what matching needs.
#[derive(Debug, Clone)]
struct Token {
    bytes: Range<usize>,
    reading: Range<usize>,
    function_word: bool,
    unknown: bool,
}

impl Matcher {
    /// Compiles every entry and rule of `lexicon` into one automaton.
    ///
    /// # Errors
    /// A pattern that normalises to nothing, a vocabulary too large for the encoding, a
    /// tokeniser failure, or an automaton build error.
    pub fn build(
        lexicon: Lexicon,
        segmenter: JapaneseSegmenter,
    ) -> Result<Matcher, DictionaryError> {
        let mut compiler = Compiler::new(&segmenter);
        let mut pending = Vec::new();
        for (i, entry) in lexicon.entries.iter().enumerate() {
            compiler.tokenise(
                Owner::Entry(i as u32),
                &entry.pattern,
                &entry.origin,
                &mut pending,
            )?;
        }
        for (i, rule) in lexicon.rules.iter().enumerate() {
            compiler.tokenise(Owner::Rule(i as u32), &rule.pattern, &rule.origin, &mut pending)?;
        }
        let vocabulary =
            compiler.vocabulary().map_err(|limit| DictionaryError::VocabularyFull { limit })?;
        for p in pending {
            compiler.encode(p, &vocabulary);
        }
        let Compiler { patterns, .. } = compiler;
        let (strings, mut targets): (Vec<String>, Vec<Vec<Target>>) = patterns.into_iter().unzip();
        for t in &mut targets {
            t.sort_by_key(|t| t.piece); // first pieces first: `find_in` anchors on them
        }
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::Standard)
            .build(&strings)
            .map_err(DictionaryError::Build)?;
        Ok(Matcher {
            inner: Arc::new(Inner {
                id: NEXT_MATCHER_ID.fetch_add(1, Ordering::Relaxed),
                automaton,
                targets,
                vocabulary,
                lexicon,
                segmenter,
            }),
        })
    }

    /// The entries, indexed by [`Hit::entry`].
    pub fn entries(&self) -> &[Entry] {
        &self.inner.lexicon.entries
    }

    /// The lexicon this matcher was built from.
    pub fn lexicon(&self) -> &Lexicon {
        &self.inner.lexicon
    }

    /// Number of distinct pattern strings in the automaton (both layers).
    pub fn pattern_count(&self) -> usize {
        self.inner.targets.len()
    }

    /// The tokeniser this matcher encodes text with.
    pub fn segmenter(&self) -> &JapaneseSegmenter {
        &self.inner.segmenter
    }

    /// Finds every entry in `normalized` (text already through `normalize`) and applies the
    /// context rules.
    ///
    /// # Errors
    /// Only a tokeniser failure.
    pub fn find(&self, normalized: &str) -> Result<Findings, SegmentError> {
        let segmenter = &self.inner.segmenter;
        let mut layers = Layers::with_capacity(normalized.len());
        let mut guessed = false;
        let tokenizing = Instant::now();
        // One borrow of the word cache for the whole text, not one per token.
        WORD_CACHE.with_borrow_mut(|cache| {
            if cache.len() >= WORD_CACHE_WORDS {
                cache.clear(); // bounded: old matchers' words and rare words go together
            }
            segmenter.for_each_token(normalized, |token| {
                guessed |= layers.push_token(&self.inner, cache, token);
            })
        })?;
        Stage::Tokenize.record(tokenizing);
        let matching = Instant::now();
        let mut findings = self.find_in(layers);
        Stage::Match.record(matching);
        if guessed {
            // IPADIC guessed the edges of a hiragana run; screen the re-cut reading too and
            // keep what either reading finds.
            let mut recut = Layers::with_capacity(normalized.len());
            segmenter
                .for_each_recut_word(normalized, |w| recut.push(&self.inner.vocabulary, &w))?;
            let more = self.find_in(recut);
            for hit in more.hits {
                if !findings.hits.iter().any(|h| h.entry == hit.entry && h.bytes == hit.bytes) {
                    findings.hits.push(hit);
                }
            }
            for s in more.silenced {
                if !findings.silenced.contains(&s) {
                    findings.silenced.push(s);
                }
            }
        }
        Ok(findings)
    }

    /// Matches one tokenisation of an utterance.
    fn find_in(&self, layers: Layers) -> Findings {
        let inner = &*self.inner;
        let Layers { tokens, lemmas, readings } = layers;
        if tokens.is_empty() {
            return Findings::default();
        }
        let lemma_len = lemmas.len();
        let reading_offset = lemma_len + LAYER_SEPARATOR.len_utf8();
        let mut haystack = lemmas;
        haystack.push(LAYER_SEPARATOR);
        haystack.push_str(&readings);

        // (pattern, token span) of every hit in either layer.
        let mut matches: Vec<(usize, Range<usize>)> = Vec::with_capacity(2 * tokens.len());
        for m in inner.automaton.find_overlapping_iter(&haystack) {
            let span = if m.end() <= lemma_len {
                // Each token is one 4-byte scalar in the base-form layer.
                m.start() / 4..m.end() / 4
            } else if m.start() >= reading_offset {
                match align_reading(
                    &tokens,
                    &haystack[reading_offset..],
                    m.start() - reading_offset,
                    m.end() - reading_offset,
                ) {
                    Some(span) => span,
                    None => continue,
                }
            } else {
                continue; // cannot happen: no pattern contains the separator
            };
            matches.push((m.pattern().as_usize(), span));
        }
        // Only owners whose first piece hit can match at all. Endings such as ぞ or から are
        // later pieces of hundreds of entries and hit in most sentences; skipping owners
        // without an anchor keeps the piece list (and its sort) small.
        let entry_count = inner.lexicon.entries.len();
        let slot = |owner: Owner| match owner {
            Owner::Entry(i) => i as usize,
            Owner::Rule(i) => entry_count + i as usize,
        };
        let mut anchored = vec![false; entry_count + inner.lexicon.rules.len()];
        for (p, _) in &matches {
            // Targets are sorted by piece, so the first pieces come first.
            for t in inner.targets[*p].iter().take_while(|t| t.piece == 0) {
                anchored[slot(t.owner)] = true;
            }
        }
        // Piece hits of anchored owners, packed (see `PieceHit`) so that sorting them, which
        // groups them by owner for `combine`, compares integers rather than tuples.
        let most = matches.iter().map(|(p, _)| inner.targets[*p].len()).sum();
        let mut pieces: Vec<PieceHit> = Vec::with_capacity(most);
        for (p, span) in &matches {
            for t in inner.targets[*p].iter().filter(|t| anchored[slot(t.owner)]) {
                pieces.push(PieceHit::new(slot(t.owner), t.piece, span));
            }
        }
        pieces.sort_unstable();
        pieces.dedup();

        let mut entry_spans: Vec<(usize, Range<usize>)> = Vec::new();
        let mut rule_spans: Vec<(usize, Range<usize>)> = Vec::new();
        let mut group_hits: Vec<(u16, Range<usize>)> = Vec::new();
        let mut combined: Vec<Range<usize>> = Vec::new();
        for group in pieces.chunk_by(|a, b| a.slot() == b.slot()) {
            let slot = group[0].slot();
            let (pattern, spans) = match slot.checked_sub(entry_count) {
                None => (&inner.lexicon.entries[slot].pattern, &mut entry_spans),
                Some(rule) => (&inner.lexicon.rules[rule].pattern, &mut rule_spans),
            };
            group_hits.clear();
            group_hits.extend(group.iter().map(|hit| (hit.piece(), hit.span())));
            let index = slot.checked_sub(entry_count).unwrap_or(slot);
            combine(pattern, &group_hits, &mut combined);
            spans.extend(combined.drain(..).map(|span| (index, span)));
        }
        self.apply_context(&tokens, entry_spans, &rule_spans)
    }

    fn apply_context(
        &self,
        tokens: &[Token],
        entry_spans: Vec<(usize, Range<usize>)>,
        rule_spans: &[(usize, Range<usize>)],
    ) -> Findings {
        let rules = &self.inner.lexicon.rules;
        let mut findings = Findings::default();
        for (entry_index, span) in entry_spans {
            let entry = &self.inner.lexicon.entries[entry_index];
            let bytes = tokens[span.start].bytes.start..tokens[span.end - 1].bytes.end;
            let silencer = rule_spans.iter().find(|(r, rs)| {
                let rule = &rules[*r];
                match rule.kind {
                    // An allow phrase owns its words: any hit that uses one of them goes
                    // (土下座外交 … 謝れ is still about the news, not a demand).
                    RuleKind::Allow => rs.start < span.end && span.start < rs.end,
                    // A legitimate request raises nothing, but asked for the fourth time it
                    // is persistence: `track` entries still count inside legit forms.
                    RuleKind::Legit => {
                        !entry.flags.track && rs.start <= span.start && span.end <= rs.end
                    }
                    RuleKind::Negation => {
                        !entry.flags.no_negate
                            && rs.start >= span.end
                            && rs.start - span.end <= rule.window as usize
                    }
                    RuleKind::Hypothetical => {
                        !entry.flags.no_negate
                            && rs.end <= span.start
                            && span.start - rs.end <= rule.window as usize
                    }
                    RuleKind::Target => false,
                }
            });
            if let Some((r, _)) = silencer {
                findings.silenced.push((entry_index, bytes, rules[*r].id.clone()));
                continue;
            }
            let raiser = entry
                .flags
                .target
                .then(|| {
                    rule_spans.iter().find(|(r, rs)| {
                        rules[*r].kind == RuleKind::Target
                            && token_gap(rs, &span) <= rules[*r].window as usize
                    })
                })
                .flatten();
            let (severity, raised_by) = match raiser {
                Some((r, _)) if entry.severity.raised() != entry.severity => {
                    (entry.severity.raised(), Some(rules[*r].id.clone()))
                }
                _ => (entry.severity, None),
            };
            findings.hits.push(Hit { entry: entry_index, bytes, severity, raised_by });
        }
        findings
    }
}

/// One piece hit of an owner, packed into one integer ordered as (owner slot, piece, first
/// token, end token): slots number entries before rules, so the order groups hits by owner as
/// [`Owner`]'s own order would. Token indices and slots fit 32 bits (texts are a few KiB,
/// lexicons far below 4 G entries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct PieceHit(u128);

impl PieceHit {
    fn new(slot: usize, piece: u16, span: &Range<usize>) -> Self {
        Self(
            (slot as u128) << 96
                | u128::from(piece) << 64
                | (span.start as u128) << 32
                | span.end as u128,
        )
    }

    fn slot(self) -> usize {
        (self.0 >> 96) as usize
    }

    fn piece(self) -> u16 {
        (self.0 >> 64) as u16
    }

    fn span(self) -> Range<usize> {
        (self.0 >> 32) as u32 as usize..self.0 as u32 as usize
    }
}

/// Tokens strictly between two spans; 0 when they touch or overlap.
fn token_gap(a: &Range<usize>, b: &Range<usize>) -> usize {
    if a.end <= b.start { b.start - a.end } else { a.start.saturating_sub(b.end) }
}

/// Reading-layer hits this short (in chars) must be one whole token: two-kana readings
/// assembled from several tokens are mostly accidents (しね in …言われても|し|ね).
const SHORT_READING_CHARS: usize = 2;

/// Maps a reading-layer hit to a token span, if it starts and ends on token edges and does
/// not start on a particle (か|す in どうかすると is not カス).
fn align_reading(
    tokens: &[Token],
    readings: &str,
    start: usize,
    end: usize,
) -> Option<Range<usize>> {
    let first = tokens.binary_search_by(|t| t.reading.start.cmp(&start)).ok()?;
    let short = readings[start..end].chars().nth(SHORT_READING_CHARS).is_none();
    let last = match tokens.binary_search_by(|t| t.reading.end.cmp(&end)) {
        Ok(last) => last,
        // An unknown word is a run of one script whose edges lindera guessed (むのうだな);
        // a longer pattern may end inside it, as long as it starts on the word's start.
        Err(insert) => {
            let inside = insert.min(tokens.len() - 1);
            let t = &tokens[inside];
            if short || !t.unknown || t.reading.start >= end || t.reading.end <= end {
                return None;
            }
            inside
        }
    };
    // Empty readings cannot occur (a reading falls back to the surface), so starts and ends
    // are strictly increasing and binary search finds the one token.
    (first <= last && !tokens[first].function_word && (!short || first == last))
        .then_some(first..last + 1)
}

/// Combines the piece hits of one owner into whole-pattern matches, per the pattern's joins,
/// and appends them to `out` in text order, keeping only the longest of nested matches.
fn combine(pattern: &Pattern, group: &[(u16, Range<usize>)], out: &mut Vec<Range<usize>>) {
    let piece_spans = |p: u16| group.iter().filter(move |g| g.0 == p).map(|g| g.1.clone());
    let from = out.len();
    'first: for first in piece_spans(0) {
        let mut whole = first.clone();
        let mut last = first;
        for (i, join) in pattern.joins.iter().enumerate() {
            let next = piece_spans(i as u16 + 1)
                .filter(|s| match *join {
                    Join::FollowedWithin(gap) => {
                        s.start >= last.end && s.start - last.end <= gap as usize
                    }
                    Join::NearWithin(gap) => {
                        (s.end <= last.start || s.start >= last.end)
                            && token_gap(s, &last) <= gap as usize
                    }
                })
                .min_by_key(|s| token_gap(s, &last));
            let Some(next) = next else { continue 'first };
            whole = whole.start.min(next.start)..whole.end.max(next.end);
            last = next;
        }
        out.push(whole);
    }
    // Keep the longest: drop a match contained in another (殺す inside ぶっ殺す). In order of
    // start, longest first, a match is inside an earlier one exactly when it ends no later
    // than the furthest end seen so far; what stays is in (start, end) order.
    let found = &mut out[from..];
    found.sort_unstable_by_key(|m| (m.start, std::cmp::Reverse(m.end)));
    let mut furthest = 0;
    let mut kept = from;
    for i in from..out.len() {
        if out[i].end > furthest {
            furthest = out[i].end;
            out.swap(kept, i);
            kept += 1;
        }
    }
    out.truncate(kept);
}

/// The key under which a word's base form enters the vocabulary.
///
/// Kana are folded to hiragana. IPADIC reads a godan imperative sometimes as that verb
/// (謝れ → 謝る) and sometimes as its potential form (謝れよ → 謝れる, 死ね → 死ねる), depending
/// on the words around it, so a verb whose base form ends in an e-row kana + る is keyed by
/// the godan verb it derives from (謝れる → 謝る, ころせる → ころす). The same function keys
/// patterns and live text, so it only has to be consistent, not linguistically exact (食べる
/// becomes 食ぶ on both sides).
fn lemma_key(base_form: &str, part_of_speech: &str) -> String {
    const E_TO_U: [(char, char); 13] = [
        ('え', 'う'),
        ('け', 'く'),
        ('せ', 'す'),
        ('て', 'つ'),
        ('ね', 'ぬ'),
        ('へ', 'ふ'),
        ('め', 'む'),
        ('れ', 'る'),
        ('げ', 'ぐ'),
        ('ぜ', 'ず'),
        ('で', 'づ'),
        ('べ', 'ぶ'),
        ('ぺ', 'ぷ'),
    ];
    let folded = fold_kana(base_form).into_owned();
    if part_of_speech != "動詞" {
        return folded;
    }
    let mut chars: Vec<char> = folded.chars().collect();
    if chars.len() >= 3 && chars[chars.len() - 1] == 'る' {
        let e = chars[chars.len() - 2];
        if let Some(&(_, u)) = E_TO_U.iter().find(|(from, _)| *from == e) {
            chars.pop();
            let last = chars.len() - 1;
            chars[last] = u;
            return chars.into_iter().collect();
        }
    }
    folded
}

/// One word of a pattern: its vocabulary key and the key of its base form's reading, which
/// lets kana spellings (ころす, コロス) share the id of the kanji word (殺す).
#[derive(Debug, Clone)]
struct PatternWord {
    key: String,
    alias: Option<String>,
    reading: String,
}

/// Turns pattern alternatives into automaton strings, sharing identical strings.
///
/// Two passes: first every alternative is tokenised and the vocabulary built (keys joined with
/// their reading aliases, so the order of entries does not matter), then every alternative is
/// encoded with the final ids.
struct Compiler<'a> {
    segmenter: &'a JapaneseSegmenter,
    /// Union-find over vocabulary keys: `parent[i]`, with `keys` naming each slot.
    parent: Vec<usize>,
    slots: HashMap<String, usize>,
    patterns: Vec<(String, Vec<Target>)>,
    index: HashMap<String, usize>,
    /// (base form, part of speech) → vocabulary key of the base form's own reading. A large
    /// lexicon repeats a few thousand base forms across its entries, and tokenising each
    /// again was most of its build time.
    aliases: HashMap<(String, String), Option<String>>,
    /// IPADIC word id → (key, base form, part of speech, folded reading): reading a word's
    /// details again for each of the many patterns that use it was the rest.
    known_words: HashMap<u32, (String, String, String, String)>,
}

/// A tokenised alternative waiting for its ids.
struct Pending {
    target: Target,
    words: Vec<PatternWord>,
}

impl<'a> Compiler<'a> {
    fn new(segmenter: &'a JapaneseSegmenter) -> Self {
        Self {
            segmenter,
            parent: Vec::new(),
            slots: HashMap::new(),
            patterns: Vec::new(),
            index: HashMap::new(),
            aliases: HashMap::new(),
            known_words: HashMap::new(),
        }
    }

    fn slot(&mut self, key: &str) -> usize {
        if let Some(&s) = self.slots.get(key) {
            return s;
        }
        let s = self.parent.len();
        self.parent.push(s);
        self.slots.insert(key.to_owned(), s);
        s
    }

    fn root(&mut self, mut s: usize) -> usize {
        while self.parent[s] != s {
            self.parent[s] = self.parent[self.parent[s]];
            s = self.parent[s];
        }
        s
    }

    fn union(&mut self, a: &str, b: &str) {
        let (ra, rb) = (self.slot(a), self.slot(b));
        let (ra, rb) = (self.root(ra), self.root(rb));
        if ra != rb {
            self.parent[rb] = ra;
        }
    }

    /// Tokenises every alternative of `pattern`.
    fn tokenise(
        &mut self,
        owner: Owner,
        pattern: &Pattern,
        origin: &Origin,
        pending: &mut Vec<Pending>,
    ) -> Result<(), DictionaryError> {
        for (piece, alternatives) in pattern.pieces.iter().enumerate() {
            let target = Target { owner, piece: piece as u16 };
            for alternative in alternatives {
                let words = self.words(alternative, origin)?;
                for w in &words {
                    self.slot(&w.key);
                    if let Some(alias) = &w.alias {
                        self.union(&w.key.clone(), &alias.clone());
                    }
                }
                pending.push(Pending { target, words });
            }
        }
        Ok(())
    }

    fn words(&mut self, text: &str, origin: &Origin) -> Result<Vec<PatternWord>, DictionaryError> {
        let normalized = normalize(text);
        let tokenise_error = |source| DictionaryError::Tokenise { origin: origin.clone(), source };
        // (key, base form, part of speech, reading) per word.
        let mut raw: Vec<(String, String, String, String)> = Vec::new();
        let known = &mut self.known_words;
        self.segmenter
            .for_each_token(normalized.as_str(), |token| {
                let describe = |w: Word<'_>| {
                    (
                        lemma_key(w.base_form, w.part_of_speech),
                        w.base_form.to_owned(),
                        w.part_of_speech.to_owned(),
                        fold_kana(w.reading).into_owned(),
                    )
                };
                raw.push(match token.id() {
                    Some(id) => known.entry(id).or_insert_with(|| describe(token.word())).clone(),
                    None => describe(token.word()),
                });
            })
            .map_err(tokenise_error)?;
        if raw.is_empty() {
            return Err(DictionaryError::EmptyPattern {
                origin: origin.clone(),
                pattern: text.to_owned(),
            });
        }
        let mut words = Vec::with_capacity(raw.len());
        for (key, base, pos, reading) in raw {
            let alias = match self.aliases.get(&(base.clone(), pos.clone())) {
                Some(alias) => alias.clone(),
                None => {
                    let alias = self.base_form_reading(&base, &pos).map_err(tokenise_error)?;
                    self.aliases.insert((base, pos), alias.clone());
                    alias
                }
            };
            let alias = alias.filter(|a| *a != key);
            words.push(PatternWord { key, alias, reading });
        }
        Ok(words)
    }

    /// The vocabulary key of the reading of the base form itself (殺す → ころす), read by
    /// tokenising it alone; `None` unless it is one word.
    fn base_form_reading(&self, base: &str, pos: &str) -> Result<Option<String>, SegmentError> {
        let mut alias = None;
        let mut count = 0;
        self.segmenter.for_each_word(base, |w| {
            count += 1;
            alias = Some(lemma_key(&fold_kana(w.reading), pos));
        })?;
        Ok(alias.filter(|_| count == 1))
    }

    /// Assigns final ids: one per union-find root, 1-based (0 is "not in any pattern").
    fn vocabulary(&mut self) -> Result<HashMap<String, u32>, usize> {
        let mut root_ids: HashMap<usize, u32> = HashMap::new();
        let mut vocabulary = HashMap::with_capacity(self.slots.len());
        let keys: Vec<(String, usize)> = self.slots.iter().map(|(k, &s)| (k.clone(), s)).collect();
        for (key, slot) in keys {
            let root = self.root(slot);
            let next = root_ids.len() as u32 + 1;
            let id = *root_ids.entry(root).or_insert(next);
            if id as usize > MAX_VOCABULARY {
                return Err(MAX_VOCABULARY);
            }
            vocabulary.insert(key, id);
        }
        Ok(vocabulary)
    }

    fn encode(&mut self, pending: Pending, vocabulary: &HashMap<String, u32>) {
        let mut lemmas = String::new();
        let mut reading = String::new();
        for w in &pending.words {
            // Invariant: every pattern key was given a slot in `tokenise`.
            lemmas.push(lemma_char(vocabulary[&w.key]));
            reading.push_str(&w.reading);
        }
        self.push(lemmas, pending.target);
        if reading.chars().count() >= MIN_READING_CHARS {
            self.push(reading, pending.target);
        }
    }

    fn push(&mut self, string: String, target: Target) {
        match self.index.get(&string) {
            Some(&i) => self.patterns[i].1.push(target),
            None => {
                self.index.insert(string.clone(), self.patterns.len());
                self.patterns.push((string, vec![target]));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::OnceLock;

    use super::*;

    const ENTRIES: &str = "\
t.kill\tATTACK\tCRITICAL\tkill\t殺す|ぶっ殺す\t-\tkill
t.baka\tATTACK\tMEDIUM\tinsult\t馬鹿\ttarget\tinsult
t.muno\tATTACK\tMEDIUM\tinsult\t無能\ttarget\tinsult
t.dogeza\tDOGEZA\tHIGH\tdogeza\t土下座 ~4 謝れ\t-\tdogeza
t.expose\tONLINE_EXPOSURE\tHIGH\texpose\tネット|SNS &6 晒す\t-\texpose
t.refund\tPERSISTENCE\tLOW\trefund\t返金して\ttrack\trefund
";
    const RULES: &str = "\
c.neg\tnegation\t3\tつもりはない\tneg
c.you\ttarget\t3\tお前|てめえ\tyou
c.allow\tallow\t-\t土下座外交\tnews
c.legit\tlegit\t-\t返金してください\tlegit
";

    fn matcher() -> &'static Matcher {
        static MATCHER: OnceLock<Matcher> = OnceLock::new();
        MATCHER.get_or_init(|| {
            let lexicon = Lexicon::parse_files([
                (Path::new("t.tsv"), ENTRIES),
                (Path::new("context.tsv"), RULES),
            ])
            .expect("valid");
            Matcher::build(lexicon, JapaneseSegmenter::try_new().expect("dictionary"))
                .expect("builds")
        })
    }

    /// (entry id, severity, matched normalised text) of every standing hit.
    fn hits(text: &str) -> Vec<(String, Severity, String)> {
        let normalized = normalize(text);
        let findings = matcher().find(normalized.as_str()).expect("find");
        findings
            .hits
            .iter()
            .map(|h| {
                (
                    matcher().entries()[h.entry].id.clone(),
                    h.severity,
                    normalized.as_str()[h.bytes.clone()].to_owned(),
                )
            })
            .collect()
    }

    macro_rules! t {
        ($name:expr, $text:expr, $want:expr) => {
            ($name, $text, $want)
        };
    }

    /// (why, text, entry ids expected to hit).
    const ROWS: &[(&str, &str, &[&str])] = &[
        t!("inflection reaches the base form", "殺されたいのか", &["t.kill"]),
        t!("hiragana reaches the kanji entry", "ころすぞ", &["t.kill"]),
        t!("katakana reaches the kanji entry", "コロス", &["t.kill"]),
        t!("longest alternative wins", "ぶっ殺す", &["t.kill"]),
        t!("loanword is one token", "来月からバカンスです", &[]),
        t!("kanji compound is one token", "殺菌してください", &[]),
        t!("reading assembled across a particle is not a word", "どうかすると", &[]),
        t!("gap join", "土下座してでも謝れよ", &["t.dogeza"]),
        t!("gap join needs the order", "謝れ土下座", &[]),
        t!("near join either order", "晒すからなネットに", &["t.expose"]),
        t!("negation defuses", "殺すつもりはない", &[]),
        t!("allow-list silences", "土下座外交のニュースで謝れと", &[]),
        t!("a track entry stands inside a legit form", "返金してください", &["t.refund"]),
        t!("unknown hiragana run", "おまえほんとむのうだな", &["t.muno"]),
    ];

    /// Table of what hits and what must not.
    #[test]
    fn rows() {
        for (why, text, want) in ROWS {
            let got: Vec<String> = hits(text).into_iter().map(|h| h.0).collect();
            assert_eq!(&got, want, "help: {why}: {text:?}");
        }
    }

    /// A second-person marker near a `target` entry raises its severity one level.
    #[test]
    fn target_raises() {
        assert_eq!(hits("馬鹿")[0].1, Severity::Medium);
        assert_eq!(hits("お前馬鹿だろ")[0].1, Severity::High);
        assert_eq!(hits("お前殺すぞ")[0].1, Severity::Critical, "help: not a target entry");
    }

    /// Every hit starts and ends on token edges, so the quote is whole words.
    #[test]
    fn hits_are_whole_words() {
        assert_eq!(hits("ころすぞ")[0].2, "ころす");
        // 謝れよ is one token here (IPADIC reads it as an imperative with よ).
        assert_eq!(hits("土下座してでも謝れよ")[0].2, "土下座してでも謝れよ");
    }
}
