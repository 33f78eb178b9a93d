//! Matching: finds lexicon entries in a tokenised utterance with Aho-Corasick automata (one per
//! token layer), and applies the lexicon's context rules (negation, hypotheticals,
//! second-person targeting, allow-lists and legitimate-complaint forms).
//!
//! # How the automata see words
//!
//! Keyword screens that search raw text hit バカ inside バカンス and 殺 inside 殺菌. Here every
//! match starts and ends on a word boundary that lindera found, because the automata never
//! search raw text. They search an *encoding of the token layers* of the utterance:
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
//! Every pattern alternative of every entry and rule is compiled into both layers: one
//! automaton holds the base-form strings and searches the base-form layer, another the
//! readings and searches the reading layer (two, so that a large lexicon builds them on two
//! cores at once). The search is overlapping (`MatchKind::Standard`), unlike the usual dictionary search with
//! `LeftmostLongest`: context rules must see markers that overlap entry hits (お前 inside
//! お前殺すぞ), and we choose the longest evidence ourselves afterwards.
//!
//! Patterns go through the very same `normalize` and tokeniser as live text, so a lexicon
//! author writes natural Japanese and it matches the way customers speak it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::thread;
use std::time::Instant;

use aho_corasick::{AhoCorasick, MatchKind};

use crate::dictionary::{
    DictionaryError, Entry, Join, Lexicon, MAX_PIECES, Origin, Pattern, RuleKind,
};
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

/// One place an automaton pattern leads to: piece `piece` of the entry or rule in slot `slot`
/// (entries first, in lexicon order, then rules), packed into 32 bits as `slot << 8 | piece`,
/// so a target list of 100k entries stays small and its order is (slot, piece).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Target(u32);

/// Entries and rules a matcher can number: a slot takes the 24 high bits of a [`Target`].
pub const MAX_ENTRIES_AND_RULES: usize = 1 << 24;

impl Target {
    fn new(slot: usize, piece: usize) -> Self {
        debug_assert!(slot < MAX_ENTRIES_AND_RULES && piece < MAX_PIECES);
        Self((slot as u32) << 8 | piece as u32)
    }

    fn slot(self) -> usize {
        (self.0 >> 8) as usize
    }

    fn piece(self) -> u16 {
        (self.0 & 0xFF) as u16
    }
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

/// Heap bytes of a matcher's compiled parts, from [`Matcher::memory_usage`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MatcherMemory {
    /// The two Aho-Corasick automata (their own `memory_usage`).
    pub automaton: usize,
    /// What each automaton pattern stands for.
    pub targets: usize,
    /// Base-form keys and their ids.
    pub vocabulary: usize,
}

impl MatcherMemory {
    /// All three parts together.
    pub fn total(&self) -> usize {
        self.automaton + self.targets + self.vocabulary
    }
}

/// The compiled lexicon: the automata of both layers plus what each of their patterns means.
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
    /// Searches the base-form layer; its pattern `i` is pattern `i`.
    lemma_automaton: AhoCorasick,
    /// Searches the reading layer; its pattern `i` is pattern `lemma_patterns + i`.
    reading_automaton: AhoCorasick,
    /// How many patterns are base-form strings (they come first).
    lemma_patterns: usize,
    /// Every (owner, piece) that a pattern string stands for, pattern after pattern, each
    /// pattern's sorted by piece; see [`Inner::targets`]. One flat vector, not one per
    /// pattern: most patterns have a single target, and 185,000 small vectors cost more in
    /// headers and allocator overhead than the targets themselves.
    targets: Vec<Target>,
    /// `target_starts[p]..target_starts[p + 1]` are pattern `p`'s entries in `targets`.
    target_starts: Vec<u32>,
    vocabulary: Vocabulary,
    lexicon: Lexicon,
    segmenter: JapaneseSegmenter,
}

impl Inner {
    /// Every (owner, piece) that pattern `pattern` stands for, sorted by piece.
    fn targets(&self, pattern: usize) -> &[Target] {
        let (start, end) = (self.target_starts[pattern], self.target_starts[pattern + 1]);
        &self.targets[start as usize..end as usize]
    }
}

/// Base-form keys and their ids, sorted by key and packed into one string: a quarter of a hash
/// map's memory for a large lexicon. Looked up only for a word the per-thread word cache does
/// not hold yet, and for unknown words.
#[derive(Debug)]
struct Vocabulary {
    /// Every key, in key order, end to end.
    keys: String,
    /// `key_ends[i]` is where key `i` ends in `keys`.
    key_ends: Box<[u32]>,
    /// `ids[i]` is key `i`'s id.
    ids: Box<[u32]>,
}

impl Vocabulary {
    fn new(map: HashMap<String, u32>) -> Self {
        let mut pairs: Vec<(String, u32)> = map.into_iter().collect();
        pairs.sort_unstable();
        let mut keys = String::with_capacity(pairs.iter().map(|(k, _)| k.len()).sum());
        let mut key_ends = Vec::with_capacity(pairs.len());
        for (key, _) in &pairs {
            keys.push_str(key);
            // Invariant: keys are words of a lexicon that fits in memory (far below 4 GiB).
            key_ends.push(u32::try_from(keys.len()).expect("vocabulary below 4 GiB"));
        }
        let ids = pairs.into_iter().map(|(_, id)| id).collect();
        Self { keys, key_ends: key_ends.into(), ids }
    }

    fn key(&self, i: usize) -> &str {
        let start = i.checked_sub(1).map_or(0, |before| self.key_ends[before] as usize);
        &self.keys[start..self.key_ends[i] as usize]
    }

    /// The key's id; 0 (no lexicon word) for keys the lexicon does not use.
    fn id(&self, key: &str) -> u32 {
        let mut range = 0..self.key_ends.len();
        while !range.is_empty() {
            let mid = range.start + range.len() / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => range.start = mid + 1,
                std::cmp::Ordering::Greater => range.end = mid,
                std::cmp::Ordering::Equal => return self.ids[mid],
            }
        }
        0
    }

    fn memory_usage(&self) -> usize {
        self.keys.capacity() + (self.key_ends.len() + self.ids.len()) * size_of::<u32>()
    }
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

    fn push(&mut self, vocabulary: &Vocabulary, w: &Word<'_>) {
        let id = vocabulary.id(&lemma_key(w.base_form, w.part_of_speech));
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
        token: &DictionaryWord<'_>,
    ) -> bool {
        let Some(word_id) = token.id() else {
            let w = token.word();
            self.push(&inner.vocabulary, &w);
            return w.is_guessed_kana_run();
        };
        let cached = cache.entry((inner.id, word_id)).or_insert_with(|| {
            let w = token.word();
            let id = inner.vocabulary.id(&lemma_key(w.base_form, w.part_of_speech));
            CachedWord {
                lemma: lemma_char(id),
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

/// (matcher id, IPADIC word id) → the word as that matcher encodes it. Hashed with foldhash,
/// not SipHash: the keys are two integers, looked up once per word of every text, and SipHash
/// alone took about 2 % of a screen's instructions (the cache is bounded, so a flooding key
/// set could only slow it down, never grow it).
type WordCache = HashMap<(u64, u32), CachedWord, foldhash::fast::RandomState>;

thread_local! {
    /// Per thread, so the screening path takes no lock.
    static WORD_CACHE: RefCell<WordCache> = RefCell::new(WordCache::default());
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
    /// Compiles every entry and rule of `lexicon` into the automata of both layers.
    ///
    /// Tokenising the patterns, most of the work before the automaton, runs on up to
    /// [`std::thread::available_parallelism`] threads for a lexicon of more than 2,048
    /// pattern alternatives (on the calling thread otherwise); the result is the same for
    /// any number of threads. The two automata are then built side by side when there is
    /// more than one core.
    ///
    /// # Errors
    /// A pattern that normalises to nothing, a vocabulary too large for the encoding, a
    /// tokeniser failure, or an automaton build error.
    pub fn build(
        mut lexicon: Lexicon,
        segmenter: JapaneseSegmenter,
    ) -> Result<Matcher, DictionaryError> {
        // The matcher keeps the lexicon: drop the slack its loader's vectors grew.
        lexicon.entries.shrink_to_fit();
        lexicon.rules.shrink_to_fit();
        let alternatives = alternatives(&lexicon)?;
        let threads = thread::available_parallelism().map_or(1, NonZeroUsize::get);
        let (blocks, keys) = tokenise_all(&segmenter, &alternatives, threads, BLOCK_ALTERNATIVES)?;
        let Compiled { strings, lemma_patterns, targets, target_starts, vocabulary } =
            compile(&alternatives, blocks, keys)?;
        drop(alternatives);
        let (lemmas, readings) = strings.split_at(lemma_patterns);
        let build = |strings: &[String]| {
            AhoCorasick::builder()
                .match_kind(MatchKind::Standard)
                .build(strings)
                .map_err(DictionaryError::Build)
        };
        let (lemma_automaton, reading_automaton) = if threads > 1 {
            thread::scope(|scope| {
                let helper = thread::Builder::new().spawn_scoped(scope, || build(readings));
                let lemma = build(lemmas);
                // A helper the OS will not start: build the readings here instead.
                let reading = match helper {
                    Ok(handle) => {
                        handle.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    }
                    Err(_) => build(readings),
                };
                (lemma, reading)
            })
        } else {
            (build(lemmas), build(readings))
        };
        drop(strings);
        Ok(Matcher {
            inner: Arc::new(Inner {
                id: NEXT_MATCHER_ID.fetch_add(1, Ordering::Relaxed),
                lemma_automaton: lemma_automaton?,
                reading_automaton: reading_automaton?,
                lemma_patterns,
                targets,
                target_starts,
                vocabulary: Vocabulary::new(vocabulary),
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

    /// Number of distinct pattern strings in the automata (both layers).
    pub fn pattern_count(&self) -> usize {
        self.inner.target_starts.len() - 1
    }

    /// Approximate heap bytes of what the build compiled (the automaton, the pattern targets
    /// and the vocabulary), from their capacities; the lexicon's own entries are not counted.
    pub fn memory_usage(&self) -> MatcherMemory {
        let inner = &*self.inner;
        MatcherMemory {
            automaton: inner.lemma_automaton.memory_usage()
                + inner.reading_automaton.memory_usage(),
            targets: inner.targets.capacity() * size_of::<Target>()
                + inner.target_starts.capacity() * size_of::<u32>(),
            vocabulary: inner.vocabulary.memory_usage(),
        }
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
            WORD_CACHE.with_borrow_mut(|cache| {
                segmenter.for_each_recut_word(normalized, |token| {
                    recut.push_token(&self.inner, cache, token);
                })
            })?;
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
        // (pattern, token span) of every hit in either layer, base forms first.
        let mut matches: Vec<(usize, Range<usize>)> = Vec::with_capacity(2 * tokens.len());
        for m in inner.lemma_automaton.find_overlapping_iter(&lemmas) {
            // Each token is one 4-byte scalar in the base-form layer.
            matches.push((m.pattern().as_usize(), m.start() / 4..m.end() / 4));
        }
        for m in inner.reading_automaton.find_overlapping_iter(&readings) {
            if let Some(span) = align_reading(&tokens, &readings, m.start(), m.end()) {
                matches.push((inner.lemma_patterns + m.pattern().as_usize(), span));
            }
        }
        // Only owners whose first piece hit can match at all. Endings such as ぞ or から are
        // later pieces of hundreds of entries and hit in most sentences; skipping owners
        // without an anchor keeps the piece list (and its sort) small.
        let entry_count = inner.lexicon.entries.len();
        let mut anchored = vec![false; entry_count + inner.lexicon.rules.len()];
        for (p, _) in &matches {
            // Targets are sorted by piece, so the first pieces come first.
            for t in inner.targets(*p).iter().take_while(|t| t.piece() == 0) {
                anchored[t.slot()] = true;
            }
        }
        // Piece hits of anchored owners, packed (see `PieceHit`) so that sorting them, which
        // groups them by owner for `combine`, compares integers rather than tuples.
        let most = matches.iter().map(|(p, _)| inner.targets(*p).len()).sum();
        let mut pieces: Vec<PieceHit> = Vec::with_capacity(most);
        for (p, span) in &matches {
            for t in inner.targets(*p).iter().filter(|t| anchored[t.slot()]) {
                pieces.push(PieceHit::new(t.slot(), t.piece(), span));
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
            let (pattern, spans, index) = match slot.checked_sub(entry_count) {
                None => (&inner.lexicon.entries[slot].pattern, &mut entry_spans, slot),
                Some(rule) => (&inner.lexicon.rules[rule].pattern, &mut rule_spans, rule),
            };
            group_hits.clear();
            group_hits.extend(group.iter().map(|hit| (hit.piece(), hit.span())));
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

/// One piece hit of an entry or rule, packed into one integer ordered as (slot, piece, first
/// token, end token), so that sorting groups the hits by owner. Token indices fit 32 bits
/// (texts are a few KiB).
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

/// Alternatives a thread tokenises at a time. Threads take blocks in order from a shared
/// counter, so a thread that gets less of the CPU (the machine may be busy) just takes fewer
/// blocks; a lexicon of one block is tokenised on the calling thread, with no thread started.
const BLOCK_ALTERNATIVES: usize = 2048;

/// Marks a thread-local key that has no global slot yet.
const UNSLOTTED: u32 = u32::MAX;

/// One alternative phrase of one pattern piece, in lexicon order (entries, then rules).
struct Alternative<'l> {
    target: Target,
    text: &'l str,
    origin: &'l Origin,
}

/// Every alternative of every entry and rule, in the order the automaton numbers them.
///
/// # Errors
/// More entries and rules than [`MAX_ENTRIES_AND_RULES`].
fn alternatives(lexicon: &Lexicon) -> Result<Vec<Alternative<'_>>, DictionaryError> {
    let count = lexicon.entries.len() + lexicon.rules.len();
    if count > MAX_ENTRIES_AND_RULES {
        return Err(DictionaryError::TooManyEntries { count, limit: MAX_ENTRIES_AND_RULES });
    }
    let entries = lexicon.entries.iter().map(|e| (&e.pattern, &e.origin));
    let rules = lexicon.rules.iter().map(|r| (&r.pattern, &r.origin));
    let mut out = Vec::new();
    for (slot, (pattern, origin)) in entries.chain(rules).enumerate() {
        // `Pattern::parse` holds a pattern to MAX_PIECES pieces.
        for (piece, alternatives) in pattern.pieces.iter().enumerate() {
            let target = Target::new(slot, piece);
            out.extend(alternatives.iter().map(|text| Alternative { target, text, origin }));
        }
    }
    Ok(out)
}

/// The tokenised words of a run of consecutive alternatives. Keys are ids in the key table of
/// the thread that tokenised the block; [`compile`] maps them to global slots.
struct Block {
    /// Index of the block's first alternative.
    start: usize,
    /// The thread whose key table `words` refers to.
    thread: usize,
    /// (key, alias) of every word, alternative after alternative. The alias is the key of the
    /// word's base-form reading, which lets kana spellings (ころす, コロス) share the id of the
    /// kanji word (殺す). [`compile`] overwrites each key with its global slot.
    words: Vec<(u32, Option<u32>)>,
    /// The folded readings of every word, concatenated: each alternative's reading layer.
    readings: String,
    /// Per alternative: where its words end in `words` and its reading in `readings`.
    ends: Vec<(u32, u32)>,
}

/// A word as the compiler reads it from the tokeniser.
struct Described {
    key: String,
    base: String,
    pos: String,
    reading: String,
    /// (key id, alias id) once resolved; only dictionary words, which recur, keep it.
    resolved: Option<(u32, Option<u32>)>,
}

impl Described {
    fn new(w: Word<'_>) -> Self {
        Self {
            key: lemma_key(w.base_form, w.part_of_speech),
            base: w.base_form.to_owned(),
            pos: w.part_of_speech.to_owned(),
            reading: fold_kana(w.reading).into_owned(),
            resolved: None,
        }
    }
}

/// One thread's tokenising state. Its memos are per thread, so threads share nothing while
/// they tokenise; a base form that two threads meet is simply read twice.
struct Tokeniser<'a> {
    segmenter: &'a JapaneseSegmenter,
    /// Key id → vocabulary key, in the order this thread first met them.
    keys: Vec<String>,
    key_ids: HashMap<String, u32>,
    /// IPADIC word id → the word: reading a word's details again for each of the many
    /// patterns that use it was a large part of the build.
    known: HashMap<u32, Described>,
    /// "base form\0part of speech" → key id of the base form's own reading. A large lexicon
    /// repeats a few thousand base forms, and tokenising each again was most of its build time.
    aliases: HashMap<String, Option<u32>>,
}

impl<'a> Tokeniser<'a> {
    fn new(segmenter: &'a JapaneseSegmenter) -> Self {
        Self {
            segmenter,
            keys: Vec::new(),
            key_ids: HashMap::new(),
            known: HashMap::new(),
            aliases: HashMap::new(),
        }
    }

    /// Tokenises `alternatives`, which start at index `start`; stops at the first failure.
    fn block(
        &mut self,
        thread: usize,
        start: usize,
        alternatives: &[Alternative<'_>],
    ) -> Result<Block, DictionaryError> {
        let mut block = Block {
            start,
            thread,
            words: Vec::with_capacity(2 * alternatives.len()),
            readings: String::new(),
            ends: Vec::with_capacity(alternatives.len()),
        };
        for alternative in alternatives {
            self.alternative(alternative, &mut block)?;
        }
        Ok(block)
    }

    /// Appends the words of one alternative to `block`.
    fn alternative(
        &mut self,
        alternative: &Alternative<'_>,
        block: &mut Block,
    ) -> Result<(), DictionaryError> {
        let origin = alternative.origin;
        let tokenise_error = |source| DictionaryError::Tokenise { origin: origin.clone(), source };
        let normalized = normalize(alternative.text);
        let Tokeniser { segmenter, keys, key_ids, known, aliases } = self;
        // A dictionary word by its IPADIC id (described in `known`), an unknown one in full.
        let mut raw: Vec<Result<u32, Described>> = Vec::new();
        segmenter
            .for_each_token(normalized.as_str(), |token| {
                raw.push(match token.id() {
                    Some(id) => {
                        known.entry(id).or_insert_with(|| Described::new(token.word()));
                        Ok(id)
                    }
                    None => Err(Described::new(token.word())),
                });
            })
            .map_err(tokenise_error)?;
        if raw.is_empty() {
            return Err(DictionaryError::EmptyPattern {
                origin: origin.clone(),
                pattern: alternative.text.to_owned(),
            });
        }
        let mut resolve = |d: &Described| -> Result<(u32, Option<u32>), SegmentError> {
            let key = intern(keys, key_ids, &d.key);
            let lookup = format!("{}\0{}", d.base, d.pos);
            let alias = match aliases.get(&lookup) {
                Some(&alias) => alias,
                None => {
                    let alias = base_form_reading(segmenter, &d.base, &d.pos)?
                        .map(|a| intern(keys, key_ids, &a));
                    aliases.insert(lookup, alias);
                    alias
                }
            };
            Ok((key, alias.filter(|&a| a != key)))
        };
        for word in raw {
            let (resolved, reading) = match word {
                Ok(id) => {
                    // Invariant: the callback above described every id it returned.
                    let d = known.get_mut(&id).expect("described while tokenising");
                    let resolved = match d.resolved {
                        Some(resolved) => resolved,
                        None => *d.resolved.insert(resolve(d).map_err(tokenise_error)?),
                    };
                    (resolved, &d.reading)
                }
                Err(d) => {
                    block.readings.push_str(&d.reading);
                    block.words.push(resolve(&d).map_err(tokenise_error)?);
                    continue;
                }
            };
            block.readings.push_str(reading);
            block.words.push(resolved);
        }
        block.ends.push((block.words.len() as u32, block.readings.len() as u32));
        Ok(())
    }
}

/// The id of `key` in one thread's key table, adding it if new.
fn intern(keys: &mut Vec<String>, key_ids: &mut HashMap<String, u32>, key: &str) -> u32 {
    if let Some(&id) = key_ids.get(key) {
        return id;
    }
    let id = keys.len() as u32;
    keys.push(key.to_owned());
    key_ids.insert(key.to_owned(), id);
    id
}

/// The vocabulary key of the reading of the base form itself (殺す → ころす), read by
/// tokenising it alone; `None` unless it is one word.
fn base_form_reading(
    segmenter: &JapaneseSegmenter,
    base: &str,
    pos: &str,
) -> Result<Option<String>, SegmentError> {
    let mut alias = None;
    let mut count = 0;
    segmenter.for_each_word(base, |w| {
        count += 1;
        alias = Some(lemma_key(&fold_kana(w.reading), pos));
    })?;
    Ok(alias.filter(|_| count == 1))
}

/// Tokenises every alternative, on up to `threads` threads, `block_alternatives` at a time;
/// returns the blocks in order and
/// each thread's key table.
///
/// Tokenising is most of the build and each alternative is independent, so it runs on every
/// core; what depends on all of them (the vocabulary, the encoding) runs after, in order, so
/// the result does not depend on how the blocks were shared out.
///
/// # Errors
/// The error of the first alternative that fails, as a sequential build would report it:
/// blocks are claimed in order and each stops at its first failure, so every block before a
/// failed one was tokenised whole.
fn tokenise_all(
    segmenter: &JapaneseSegmenter,
    alternatives: &[Alternative<'_>],
    threads: usize,
    block_alternatives: usize,
) -> Result<(Vec<Block>, Vec<Vec<String>>), DictionaryError> {
    let block_count = alternatives.len().div_ceil(block_alternatives);
    let threads = threads.clamp(1, block_count.max(1));
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let work = |thread: usize| {
        let mut tokeniser = Tokeniser::new(segmenter);
        let mut done = Vec::new();
        while !failed.load(Ordering::Relaxed) {
            let b = next.fetch_add(1, Ordering::Relaxed);
            if b >= block_count {
                break;
            }
            let start = b * block_alternatives;
            let end = (start + block_alternatives).min(alternatives.len());
            let block = tokeniser.block(thread, start, &alternatives[start..end]);
            failed.fetch_or(block.is_err(), Ordering::Relaxed);
            done.push((b, block));
        }
        (tokeniser.keys, done)
    };
    let per_thread = if threads == 1 {
        vec![work(0)]
    } else {
        let work = &work;
        thread::scope(|s| {
            // Blocks are claimed as threads get to them, so a helper the OS will not start
            // is simply missing, not a failure: the others take its share.
            let helpers: Vec<_> = (1..threads)
                .filter_map(|t| {
                    thread::Builder::new()
                        .name("lexicon-build".into())
                        .spawn_scoped(s, move || work(t))
                        .ok()
                })
                .collect();
            let mut all = vec![work(0)];
            for helper in helpers {
                all.push(helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
            }
            all
        })
    };
    let mut keys = Vec::with_capacity(per_thread.len());
    let mut blocks = Vec::with_capacity(block_count);
    for (thread_keys, done) in per_thread {
        keys.push(thread_keys);
        blocks.extend(done);
    }
    blocks.sort_unstable_by_key(|(b, _)| *b);
    let blocks = blocks.into_iter().map(|(_, block)| block).collect::<Result<_, _>>()?;
    Ok((blocks, keys))
}

/// The compiled form of a lexicon: automaton strings and what each stands for.
#[cfg_attr(test, derive(Debug, PartialEq))]
struct Compiled {
    /// The base-form strings, then the readings.
    strings: Vec<String>,
    /// How many of `strings` are base-form strings.
    lemma_patterns: usize,
    targets: Vec<Target>,
    target_starts: Vec<u32>,
    vocabulary: HashMap<String, u32>,
}

/// Builds the vocabulary from the tokenised blocks and encodes every alternative with it,
/// sharing identical strings.
///
/// Two passes: first every word's key is given a slot and joined with its reading alias in
/// a union-find (so the order of entries does not matter), then every alternative is encoded
/// with the final ids. Both walk the blocks in lexicon order, so slots, ids and pattern
/// numbers are the same however many threads tokenised.
///
/// # Errors
/// A vocabulary too large for the encoding.
fn compile(
    alternatives: &[Alternative<'_>],
    mut blocks: Vec<Block>,
    mut keys: Vec<Vec<String>>,
) -> Result<Compiled, DictionaryError> {
    // Union-find over vocabulary keys: `parent[slot]`, `slots` naming each slot.
    let mut slots: HashMap<String, u32> = HashMap::new();
    let mut parent: Vec<u32> = Vec::new();
    let mut local: Vec<Vec<u32>> = keys.iter().map(|k| vec![UNSLOTTED; k.len()]).collect();
    for block in &mut blocks {
        let (keys, local) = (&mut keys[block.thread], &mut local[block.thread]);
        let mut slot = |id: u32, parent: &mut Vec<u32>| {
            let id = id as usize;
            if local[id] == UNSLOTTED {
                let next = parent.len() as u32;
                local[id] = *slots.entry(std::mem::take(&mut keys[id])).or_insert_with(|| {
                    parent.push(next);
                    next
                });
            }
            local[id]
        };
        for word in &mut block.words {
            let key = slot(word.0, &mut parent);
            if let Some(alias) = word.1 {
                let alias = slot(alias, &mut parent);
                let (ra, rb) = (root(&mut parent, key), root(&mut parent, alias));
                if ra != rb {
                    parent[rb as usize] = ra;
                }
            }
            word.0 = key;
        }
    }
    // The thread key tables are spent (their strings moved into `slots`); free them before
    // the encoding allocates, to keep the build's peak down.
    drop((keys, local));

    // Final ids: one per union-find root, 1-based (0 is "not in any pattern"), numbered in
    // slot order so that a lexicon always encodes the same way.
    let mut root_ids = vec![0u32; parent.len()];
    let mut roots = 0;
    for s in 0..parent.len() as u32 {
        let r = root(&mut parent, s) as usize;
        if root_ids[r] == 0 {
            roots += 1;
            if roots > MAX_VOCABULARY {
                return Err(DictionaryError::VocabularyFull { limit: MAX_VOCABULARY });
            }
            root_ids[r] = roots as u32;
        }
    }
    let ids: Vec<u32> =
        (0..parent.len() as u32).map(|s| root_ids[root(&mut parent, s) as usize]).collect();
    drop((parent, root_ids));
    let mut vocabulary = slots;
    for id in vocabulary.values_mut() {
        *id = ids[*id as usize];
    }

    // Encode: each alternative as its base-form string, and as its reading when that is long
    // enough; identical strings of one layer become one pattern with several targets. Each
    // layer numbers its own strings; the readings' numbers move past the base forms' below.
    let mut index: [HashMap<String, u32>; 2] = [HashMap::new(), HashMap::new()];
    let mut owners: Vec<(u32, Target)> = Vec::with_capacity(2 * alternatives.len());
    let mut reading_owner = Vec::with_capacity(alternatives.len());
    let mut push = |layer: usize, string: &str, target: Target| {
        let index = &mut index[layer];
        let id = match index.get(string) {
            Some(&id) => id,
            None => {
                let id = index.len() as u32;
                index.insert(string.to_owned(), id);
                id
            }
        };
        if layer == READING_LAYER {
            reading_owner.push(owners.len());
        }
        owners.push((id, target));
    };
    let mut lemmas = String::new();
    for block in &blocks {
        let (mut word, mut reading) = (0, 0);
        for (i, &(word_end, reading_end)) in block.ends.iter().enumerate() {
            let target = alternatives[block.start + i].target;
            let (word_end, reading_end) = (word_end as usize, reading_end as usize);
            lemmas.clear();
            lemmas
                .extend(block.words[word..word_end].iter().map(|w| lemma_char(ids[w.0 as usize])));
            push(LEMMA_LAYER, &lemmas, target);
            let readings = &block.readings[reading..reading_end];
            if readings.chars().count() >= MIN_READING_CHARS {
                push(READING_LAYER, readings, target);
            }
            (word, reading) = (word_end, reading_end);
        }
    }
    drop(blocks);

    let [lemma_index, reading_index] = index;
    let lemma_patterns = lemma_index.len();
    for &owner in &reading_owner {
        owners[owner].0 += lemma_patterns as u32;
    }
    drop(reading_owner);
    let mut strings = vec![String::new(); lemma_patterns + reading_index.len()];
    for (string, id) in lemma_index {
        strings[id as usize] = string;
    }
    for (string, id) in reading_index {
        strings[lemma_patterns + id as usize] = string;
    }
    // Stable: a pattern's targets stay in lexicon order within a piece, first pieces first
    // (`find_in` anchors on them).
    owners.sort_by_key(|&(id, t)| (id, t.piece()));
    let mut target_starts = vec![0u32; strings.len() + 1];
    for &(id, _) in &owners {
        target_starts[id as usize + 1] += 1;
    }
    for i in 1..target_starts.len() {
        target_starts[i] += target_starts[i - 1];
    }
    let targets = owners.into_iter().map(|(_, t)| t).collect();
    Ok(Compiled { strings, lemma_patterns, targets, target_starts, vocabulary })
}

/// `compile`'s index of the base-form layer's strings.
const LEMMA_LAYER: usize = 0;
/// `compile`'s index of the reading layer's strings.
const READING_LAYER: usize = 1;

/// The root of `s` in the union-find, halving the path on the way.
fn root(parent: &mut [u32], mut s: u32) -> u32 {
    while parent[s as usize] != s {
        parent[s as usize] = parent[parent[s as usize] as usize];
        s = parent[s as usize];
    }
    s
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

    fn compiled(lexicon: &Lexicon, threads: usize, block: usize) -> Result<Compiled, String> {
        let segmenter = matcher().segmenter();
        let alternatives = alternatives(lexicon).map_err(|e| e.to_string())?;
        let (blocks, keys) =
            tokenise_all(segmenter, &alternatives, threads, block).map_err(|e| e.to_string())?;
        compile(&alternatives, blocks, keys).map_err(|e| e.to_string())
    }

    /// Tokenising on several threads compiles exactly what one thread does: the same strings
    /// in the same order, the same targets and the same vocabulary ids.
    #[test]
    fn threads_do_not_change_the_result() {
        let lexicon = matcher().lexicon();
        let one = compiled(lexicon, 1, 1 << 20).expect("compiles");
        for (threads, block) in [(1, 1), (2, 1), (4, 3), (3, 5)] {
            let many = compiled(lexicon, threads, block).expect("compiles");
            assert_eq!(many, one, "help: {threads} threads, blocks of {block}");
        }
    }

    /// The packed vocabulary finds every key's id, and 0 for keys it does not hold, prefixes
    /// and extensions of its keys included.
    #[test]
    fn vocabulary_lookup() {
        let keys = ["ころす", "ころ", "殺す", "a", "ab", "abc", "死ぬ"];
        let map: HashMap<String, u32> =
            keys.iter().enumerate().map(|(i, k)| ((*k).to_owned(), i as u32 + 1)).collect();
        let vocabulary = Vocabulary::new(map.clone());
        for (key, id) in &map {
            assert_eq!(vocabulary.id(key), *id, "help: key {key:?}");
        }
        for missing in ["", "こ", "ころすぞ", "abcd", "b", "殺"] {
            assert_eq!(vocabulary.id(missing), 0, "help: key {missing:?}");
        }
        assert_eq!(Vocabulary::new(HashMap::new()).id("ころす"), 0);
    }

    /// A target keeps its slot and piece through the packing, and orders by (slot, piece).
    #[test]
    fn targets_pack_slot_and_piece() {
        for (slot, piece) in [(0, 0), (1, 255), (MAX_ENTRIES_AND_RULES - 1, 7)] {
            let t = Target::new(slot, piece);
            assert_eq!((t.slot(), usize::from(t.piece())), (slot, piece));
        }
        assert!(Target::new(1, 0) > Target::new(0, 255));
        assert!(Target::new(3, 2) > Target::new(3, 1));
    }

    /// With several blocks failing, the error names the first failing entry, as a
    /// sequential build would.
    #[test]
    fn first_failure_is_reported() {
        let entries = "\
t.a\tATTACK\tLOW\ta\t殺す\t-\ta
t.b\tATTACK\tLOW\tb\t馬鹿\t-\tb
t.c\tATTACK\tLOW\tc\t\u{7}\t-\tc
t.d\tATTACK\tLOW\td\t無能\t-\td
t.e\tATTACK\tLOW\te\t\u{7}\u{7}\t-\te
";
        let lexicon = Lexicon::parse_files([(Path::new("t.tsv"), entries)]).expect("parses");
        for (threads, block) in [(1, 1 << 20), (2, 1), (4, 1), (2, 2)] {
            let err = compiled(&lexicon, threads, block).expect_err("empty pattern");
            assert!(
                err.starts_with("t.tsv:3:"),
                "help: {threads} threads, blocks of {block}: {err}"
            );
        }
    }
}
