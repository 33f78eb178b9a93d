//! Tokenisation: splits normalised Japanese text into words with lindera and the embedded IPADIC
//! dictionary, and hands each word's surface, base form (原形) and reading (読み) to the matcher.
//!
//! Lindera stays behind this file: its API changes between versions, and nothing else in the
//! crate names a lindera type (charabia's `Segmenter` boundary does the same).
//!
//! The dictionary is compiled by `build.rs` from the vendored IPADIC source and embedded in the
//! binary, so there is nothing to download or find on disk at run time. Lindera's `Segmenter`
//! is cheap to clone (the dictionary is behind `Arc`s) but segmenting needs a mutable lattice,
//! so each thread keeps its own `SegmentWorker` (lindera's intended pattern) and reuses its
//! buffers across calls.

use std::cell::RefCell;
use std::ops::Range;
use std::sync::OnceLock;

use lindera::dictionary::Dictionary;
use lindera::mode::Mode;
use lindera::segmenter::Segmenter;
use lindera::worker::SegmentWorker;
use lindera_dictionary::dictionary::DetailFields;
use lindera_dictionary::viterbi::WordId;

mod ipadic {
    // The files come from `build.rs`, which writes them under `$LINDERA_WORKDIR/lindera-ipadic`.
    lindera_dictionary::embedded_dictionary!("/lindera-ipadic", EmbeddedIpadicLoader);
}

/// IPADIC's details index of the base form (原形); `*` when unknown.
const DETAIL_BASE_FORM: usize = 6;
/// IPADIC's details index of the reading (読み, katakana); `*` or absent when unknown.
const DETAIL_READING: usize = 7;
/// IPADIC's details index of the part of speech (品詞).
const DETAIL_POS: usize = 0;

thread_local! {
    // One worker per thread: the worker owns a reusable lattice and is `&mut` only.
    // The `Option` is filled on the first call with a clone of the caller's segmenter;
    // all segmenters share the one embedded dictionary, so any of them will do.
    static WORKER: RefCell<Option<SegmentWorker>> = const { RefCell::new(None) };
}

/// One word of the text, as the matcher sees it; borrowed for the duration of a callback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Word<'a> {
    /// Byte range of the word in the segmented text.
    pub range: Range<usize>,
    /// The word as written.
    pub surface: &'a str,
    /// The dictionary form (殺せ → 殺す); the surface for unknown words.
    pub base_form: &'a str,
    /// The reading in katakana (殺せ → コロセ); the surface for unknown words.
    pub reading: &'a str,
    /// The part of speech (名詞, 動詞, 助詞, ...).
    pub part_of_speech: &'a str,
    /// The word is not in the dictionary: lindera grouped characters of one script (a run
    /// of hiragana such as むのうだな), so its edges are guesses.
    pub unknown: bool,
}

impl Word<'_> {
    /// An unknown run of hiragana that IPADIC may have cut wrong: the text has a second
    /// reading ([`JapaneseSegmenter::for_each_recut_word`]).
    pub fn is_guessed_kana_run(&self) -> bool {
        self.unknown && is_hiragana(self.surface, GUESSED_RUN_CHARS)
    }
}

/// An error from the tokeniser; lindera's own error type is kept out of our API.
#[derive(Debug, thiserror::Error)]
#[error("tokeniser failed: {0}")]
pub struct SegmentError(String);

/// One word found by [`JapaneseSegmenter::for_each_token`], its details not yet read.
pub struct DictionaryWord<'t> {
    range: Range<usize>,
    text: &'t str,
    /// `None` for a kana the re-cut split off on its own (no dictionary word).
    word_id: Option<WordId>,
    dictionary: &'static Dictionary,
}

impl DictionaryWord<'_> {
    /// Byte range of the word in the segmented text.
    pub fn range(&self) -> Range<usize> {
        self.range.clone()
    }

    /// The word's IPADIC entry, `None` for unknown words. One id always has the same surface,
    /// base form, reading and part of speech, so what a caller derives from them can be
    /// cached under it.
    pub fn id(&self) -> Option<u32> {
        self.word_id.filter(|w| !w.is_unknown()).map(|w| w.id())
    }

    /// The word with its details (reads them from the dictionary).
    pub fn word(&self) -> Word<'_> {
        let surface = &self.text[self.range.clone()];
        let fields = Fields::of(self.dictionary, self.word_id);
        Word {
            range: self.range.clone(),
            surface,
            base_form: fields.base_form.unwrap_or(surface),
            reading: fields.reading.unwrap_or(surface),
            part_of_speech: fields.part_of_speech,
            unknown: fields.reading.is_none(),
        }
    }
}

/// The details of a word that matching reads, borrowed from the embedded dictionary itself
/// (so they outlive the worker's tokens without a copy), as lindera's `Token::details` gives
/// them: unknown words from the unknown-word table, missing fields read as `*`.
struct Fields {
    part_of_speech: &'static str,
    /// `None` when IPADIC has `*` (the caller falls back to the surface).
    base_form: Option<&'static str>,
    /// `None` for unknown words.
    reading: Option<&'static str>,
}

impl Fields {
    /// A kana split off on its own by the re-cut: no part of speech, base form or reading.
    const NONE: Self = Self { part_of_speech: "", base_form: None, reading: None };

    fn of(dictionary: &'static Dictionary, word_id: Option<WordId>) -> Self {
        let Some(word_id) = word_id else { return Self::NONE };
        let id = word_id.id() as usize;
        let fields = if word_id.is_unknown() {
            dictionary.unknown_word_details_iter(id)
        } else if word_id.is_system() {
            dictionary.word_details_iter(id)
        } else {
            DetailFields::unk() // a user dictionary's word; this segmenter has none
        };
        let (mut part_of_speech, mut base_form, mut reading) = ("*", None, None);
        for (i, field) in fields.enumerate().take(DETAIL_READING + 1) {
            let known = has_detail(field).then_some(field);
            match i {
                DETAIL_POS => part_of_speech = field,
                DETAIL_BASE_FORM => base_form = known,
                DETAIL_READING => reading = known,
                _ => {}
            }
        }
        Self { part_of_speech, base_form, reading }
    }
}

/// The Japanese tokeniser: lindera in normal mode over the embedded IPADIC.
#[derive(Clone)]
pub struct JapaneseSegmenter {
    segmenter: Segmenter,
    /// The same dictionary the segmenter holds, for reading word details that outlive a
    /// worker's tokens.
    dictionary: &'static Dictionary,
}

impl std::fmt::Debug for JapaneseSegmenter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JapaneseSegmenter(ipadic)")
    }
}

impl JapaneseSegmenter {
    /// Loads the embedded dictionary (about a millisecond; the first call pays it, later calls
    /// share it).
    ///
    /// # Errors
    /// Fails only if the embedded dictionary is corrupt, which a build would already show.
    pub fn try_new() -> Result<Self, SegmentError> {
        static DICTIONARY: OnceLock<Result<Dictionary, String>> = OnceLock::new();
        let dictionary = DICTIONARY
            .get_or_init(|| ipadic::load().map_err(|e| e.to_string()))
            .as_ref()
            .map_err(|e| SegmentError(e.clone()))?;
        Ok(Self { segmenter: Segmenter::new(Mode::Normal, dictionary.clone(), None), dictionary })
    }

    /// Calls `each` for every word of `text`, in order. Whitespace is skipped, so word ranges
    /// need not touch; every byte of `text` other than whitespace is in exactly one word.
    ///
    /// # Errors
    /// Returns the tokeniser's error; none is known to occur on valid UTF-8.
    pub fn for_each_word(
        &self,
        text: &str,
        mut each: impl FnMut(Word<'_>),
    ) -> Result<(), SegmentError> {
        self.for_each_token(text, |token| each(token.word()))
    }

    /// Like [`for_each_word`](Self::for_each_word), but hands out each word before its
    /// dictionary details are read: reading them costs more than finding the word, and a
    /// caller that caches what it derives from a [`DictionaryWord::id`] can skip them.
    ///
    /// # Errors
    /// Returns the tokeniser's error; none is known to occur on valid UTF-8.
    pub fn for_each_token(
        &self,
        text: &str,
        mut each: impl FnMut(&DictionaryWord<'_>),
    ) -> Result<(), SegmentError> {
        WORKER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let worker = slot.get_or_insert_with(|| self.segmenter.new_worker());
            let tokens = worker.segment(text).map_err(|e| SegmentError(e.to_string()))?;
            for token in tokens {
                let range = token.byte_start..token.byte_end;
                each(&DictionaryWord {
                    range,
                    text,
                    word_id: Some(token.word_id),
                    dictionary: self.dictionary,
                });
            }
            Ok(())
        })
    }

    /// A second reading of `text` for when IPADIC guessed: if the text has an unknown run of
    /// hiragana (see `repair_kana_runs`), calls `each` for every word of the re-cut text (its
    /// details unread, as [`for_each_token`](Self::for_each_token) does) and returns `true`;
    /// otherwise calls nothing and returns `false`. The matcher screens both
    /// readings, since neither cut is always right (ほんと|むのうだな is better left alone,
    /// かつ|ぎはおまえ is not).
    ///
    /// # Errors
    /// Returns the tokeniser's error; none is known to occur on valid UTF-8.
    pub fn for_each_recut_word(
        &self,
        text: &str,
        mut each: impl FnMut(&DictionaryWord<'_>),
    ) -> Result<bool, SegmentError> {
        WORKER.with(|cell| {
            let mut slot = cell.borrow_mut();
            let worker = slot.get_or_insert_with(|| self.segmenter.new_worker());
            let words = segment_owned(worker, self.dictionary, text, 0)?;
            if !words.iter().any(|w| w.is_guessed_kana_run(text)) {
                return Ok(false);
            }
            let recut = repair_kana_runs(worker, self.dictionary, text, words)?;
            for w in recut {
                each(&DictionaryWord {
                    range: w.range,
                    text,
                    word_id: w.word_id,
                    dictionary: self.dictionary,
                });
            }
            Ok(true)
        })
    }
}

/// A word of the re-cut, which (unlike lindera's token) does not borrow the worker.
#[derive(Debug)]
struct OwnedWord {
    range: Range<usize>,
    /// `None` for a kana split off on its own.
    word_id: Option<WordId>,
    /// The dictionary has no reading for it (see [`Fields`]): all the re-cut needs of its
    /// details.
    unknown: bool,
}

impl OwnedWord {
    /// An unknown word of three or more hiragana: IPADIC grouped a run it could not start a
    /// known word in (ぎはおまえだからな after かつ), so its edges are probably wrong.
    fn is_guessed_kana_run(&self, text: &str) -> bool {
        self.unknown && is_hiragana(&text[self.range.clone()], GUESSED_RUN_CHARS)
    }

    fn unknown_chars(&self, text: &str) -> usize {
        if self.unknown { text[self.range.clone()].chars().count() } else { 0 }
    }
}

/// An unknown hiragana word this long is a run IPADIC grouped because it could not start a
/// known word there; shorter ones are usually real (interjections, dialect endings).
const GUESSED_RUN_CHARS: usize = 3;

/// IPADIC writes `*` (or nothing) for a detail it does not know.
fn has_detail(detail: &str) -> bool {
    detail != "*" && !detail.is_empty()
}

/// All hiragana (long-vowel mark included) and at least `min_chars` long.
fn is_hiragana(s: &str, min_chars: usize) -> bool {
    s.chars().count() >= min_chars && s.chars().all(|c| matches!(c, '\u{3041}'..='\u{309F}' | 'ー'))
}

/// Segments `text[offset..]`-relative `piece` and returns words with ranges in `text`.
fn segment_owned(
    worker: &mut SegmentWorker,
    dictionary: &'static Dictionary,
    piece: &str,
    offset: usize,
) -> Result<Vec<OwnedWord>, SegmentError> {
    let tokens = worker.segment(piece).map_err(|e| SegmentError(e.to_string()))?;
    Ok(tokens
        .into_iter()
        .map(|token| OwnedWord {
            range: token.byte_start + offset..token.byte_end + offset,
            word_id: Some(token.word_id),
            unknown: Fields::of(dictionary, Some(token.word_id)).reading.is_none(),
        })
        .collect())
}

/// Re-cuts the edges of guessed hiragana runs, the way a reader would: IPADIC's lattice may
/// let a known word swallow the first kana of the next one (かつ|ぎはおまえ for か|つぎは
/// おまえ; いふ|ざけんな for い|ふざけんな), or start an unknown run one kana early
/// (ょうただにしろよ). For each such run two re-cuts are tried, each segmented again on its
/// own: the run without its first kana, and the run with the previous word's last kana. The cut
/// that leaves the fewest unknown characters wins; with no improvement the words stay as they
/// were. Ranges still cover every byte once, so evidence offsets are unaffected.
fn repair_kana_runs(
    worker: &mut SegmentWorker,
    dictionary: &'static Dictionary,
    text: &str,
    words: Vec<OwnedWord>,
) -> Result<Vec<OwnedWord>, SegmentError> {
    let mut out: Vec<OwnedWord> = Vec::with_capacity(words.len() + 4);
    for word in words {
        if !word.is_guessed_kana_run(text) {
            out.push(word);
            continue;
        }
        let run = word.range.clone();
        let first_len = text[run.clone()].chars().next().map_or(0, char::len_utf8);
        // Cut 1: the first kana alone, the rest segmented again.
        let mut drop_first = vec![OwnedWord {
            range: run.start..run.start + first_len,
            word_id: None,
            unknown: true,
        }];
        let rest = run.start + first_len..run.end;
        drop_first.extend(segment_owned(worker, dictionary, &text[rest.clone()], rest.start)?);
        let mut best_cost = word.unknown_chars(text);
        let mut best: Option<(bool, Vec<OwnedWord>)> = None;
        let cost: usize = drop_first.iter().map(|w| w.unknown_chars(text)).sum();
        if cost < best_cost {
            best_cost = cost;
            best = Some((false, drop_first));
        }
        // Cut 2: the previous word gives up its last kana to the run.
        if let Some(prev) = out
            .last()
            .filter(|p| p.range.end == run.start && is_hiragana(&text[p.range.clone()], 2))
        {
            let prev_text = &text[prev.range.clone()];
            let last_len = prev_text.chars().next_back().map_or(0, char::len_utf8);
            let split = prev.range.end - last_len;
            let mut regrown = segment_owned(
                worker,
                dictionary,
                &text[prev.range.start..split],
                prev.range.start,
            )?;
            regrown.extend(segment_owned(worker, dictionary, &text[split..run.end], split)?);
            let cost: usize = regrown.iter().map(|w| w.unknown_chars(text)).sum();
            if cost < best_cost + prev.unknown_chars(text) {
                best = Some((true, regrown));
            }
        }
        match best {
            Some((replaces_prev, words)) => {
                if replaces_prev {
                    out.pop();
                }
                out.extend(words);
            }
            None => out.push(word),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<(String, String, String)> {
        let seg = JapaneseSegmenter::try_new().expect("embedded dictionary loads");
        let mut out = Vec::new();
        seg.for_each_word(text, |w| {
            out.push((w.surface.to_owned(), w.base_form.to_owned(), w.reading.to_owned()))
        })
        .expect("segment");
        out
    }

    /// Inflected verbs report their dictionary form and reading, which the matcher relies on.
    #[test]
    fn base_form_and_reading() {
        let w = words("殺せ");
        assert_eq!(w, vec![("殺せ".into(), "殺す".into(), "コロセ".into())]);
    }

    /// Loanwords stay one word, so バカ can never match inside バカンス.
    #[test]
    fn loanword_is_one_token() {
        let w = words("来月からバカンスです");
        assert!(w.iter().any(|(s, _, _)| s == "バカンス"), "help: got {w:?}");
    }

    /// Every non-space byte is covered exactly once: segments concatenate back to the input.
    #[test]
    fn words_concatenate_back() {
        for text in
            ["おいてめえぶっ殺すぞ", "土下座しろよ", "テレビが映らないんですけど", "abc 123"]
        {
            let joined: String = words(text).into_iter().map(|(s, _, _)| s).collect();
            assert_eq!(joined, text.replace(' ', ""), "help: segmenting {text:?}");
        }
    }

    fn recut(text: &str) -> Option<Vec<(String, String, String)>> {
        let seg = JapaneseSegmenter::try_new().expect("embedded dictionary loads");
        let mut out = Vec::new();
        let any = seg
            .for_each_recut_word(text, |token| {
                let w = token.word();
                out.push((w.surface.to_owned(), w.base_form.to_owned(), w.reading.to_owned()))
            })
            .expect("segment");
        any.then_some(out)
    }

    /// A hiragana run IPADIC grouped because a known word swallowed its first kana is cut
    /// again: つぎ and おまえ come back in かつぎはおまえ, ふざける in おいふざけんな. Text
    /// without such a run has no second reading.
    #[test]
    fn guessed_kana_runs_are_recut() {
        let w = recut("聞こえたかつぎはおまえだからな").expect("has a guessed run");
        assert!(w.iter().any(|(s, _, _)| s == "おまえ"), "help: got {w:?}");
        assert!(w.iter().any(|(s, _, _)| s == "つぎ"), "help: got {w:?}");
        let w = recut("おいふざけんなよこら").expect("has a guessed run");
        assert!(w.iter().any(|(_, b, _)| b == "ふざける"), "help: got {w:?}");
        for text in ["聞こえたかつぎはおまえだからな", "いっしょうただにしろよ"]
        {
            let joined: String =
                recut(text).expect("recut").into_iter().map(|(s, _, _)| s).collect();
            assert_eq!(joined, text, "help: re-cutting must keep every byte once");
        }
        assert_eq!(recut("土下座しろよ"), None);
    }

    /// Unknown words fall back to the surface rather than IPADIC's `*`.
    #[test]
    fn unknown_word_falls_back_to_surface() {
        let w = words("ｚｚｑｘ");
        assert!(w.iter().all(|(_, b, r)| b != "*" && r != "*"), "help: got {w:?}");
    }
}
