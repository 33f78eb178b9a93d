//! Text normalisation for matching: the first stage of screening a transcript segment.
//!
//! Data flow: transcript segment text (call ASR or chat) → **normalise (this module)** →
//! tokenise with lindera/IPADIC (`segment.rs`) → Aho-Corasick match against the lexicons →
//! alerts that quote the ORIGINAL text span. Lexicon entries go through the very same
//! [`normalize`] as live text, so whatever this module folds together, both sides fold together.
//!
//! [`normalize`] returns a [`Normalized`]: the normalised text plus, for every normalised char,
//! the range of original chars it came from, so a hit found in the normalised text can be
//! quoted as exact original evidence ([`Normalized::original_chars`]).
//!
//! # Steps
//! Applied in this order (the `NORMALIZERS` table); each is a small function with its own
//! tests saying why it exists:
//!
//! 1. `strip_invisible` — control chars (whitespace kept), zero-width and other invisible
//!    format chars, variation selectors: invisible, so they only ever disguise words; and
//!    supplementary private-use chars, which the matcher's token encoding reserves.
//! 2. `nfkc` — NFKC per cluster (a base char plus the marks that attach to it): width folding
//!    (ﾀﾋね → タヒね, ＡＢＣ → ABC, ｗ → w), composition (ﾊﾞ → バ, か + U+3099 → が).
//! 3. `lowercase_ascii` — A-Z → a-z.
//! 4. `strip_emoji` — emoji and pictographs, with the marks attached to them.
//! 5. `strip_laughter` — `w` runs used as laughter (死ねwww), not `w` inside ASCII words.
//! 6. `squash_separators` — whitespace and ・ . _ - / … between two Japanese chars (し ね,
//!    バ・カ, 死.ね); other whitespace runs collapse to one space and the ends are trimmed.
//! 7. `fold_elongation` — ー 〜 ~ after hiragana removed (しねー), after katakana one ー kept.
//! 8. `drop_vowel_runs` — vowels that only stretch the previous kana (しねええ, しねぇ).
//! 9. `collapse_repeats` — a kana repeated three or more times becomes one (ええええ → え).
//! 10. `undo_disguises` — fixed spellings of 死 (the `DISGUISES` table: タヒね, 氏ね, 市ね, 4ね).
//! 11. `canonicalise_masks` — fuseji masks next to kana/kanji become one mask char, ○.
//!
//! # Two deliberate deviations from the usual (charabia) normaliser
//! * **NFKC, not NFKD.** IPADIC's entries are composed (が, not か + U+3099), so decomposed
//!   text would tokenise badly; the compatibility part of NFKC still folds widths, so
//!   half-width katakana and full-width ASCII meet their ordinary forms.
//! * **No kana folding before tokenisation.** charabia folds katakana to hiragana; we do not,
//!   because lindera tokenises katakana loanwords correctly but splits hiragana-folded text
//!   wrongly (バカンス → ばかんす → ばか/ん/す, a false ばか). Folding is offered separately as
//!   [`fold_kana`], for the matcher's reading layer, after tokenisation.
//!
//! # Idempotence
//! `normalize(normalize(x).as_str())` gives the same text as `normalize(x)`, for every `x`:
//! lexicon entries may already be normalised and must not drift when normalised again. The
//! steps are ordered and their conditions chosen so that no step undoes or re-enables an
//! earlier one:
//! * after NFKC, a char that carries a combining mark is never changed or removed (and
//!   removed emoji take their marks with them), so no mark is moved onto a new base that a
//!   second NFKC would compose with;
//! * separator squashing counts as Japanese the chars later steps turn into Japanese or remove
//!   after kana (ー 〜 ~, the mask chars, a `4` before ね), so removing them later never leaves a
//!   separator between two Japanese chars;
//! * laughter detection looks past whitespace, separators and ASCII punctuation (`~` `*` `_`
//!   among them, which later steps may remove or turn into ○), so its verdict is the same on
//!   the second pass.
//!
//! # Offsets
//! Every normalised char records the range of original chars it came from: the whole cluster
//! for NFKC output, the whole run for a collapsed run (the one ー of カーーー covers all three,
//! the one space of a whitespace run covers the run), both chars for タヒ → 死. Dropped chars
//! belong to no normalised char, so a range of normalised text covers dropped chars strictly
//! between its first and last char (the emoji in ﾀﾋね😊よ) but not dropped chars before its
//! first or after its last char (the ーー after ころす, the www after 死ね): evidence quotes
//! what was matched, not the decoration around it.
//!
//! # Cost
//! This runs once per segment on the hot path. A call allocates one `Vec` of chars-with-ranges,
//! which every step rewrites in place (the read index runs ahead of the write index, since
//! steps only drop or merge chars); only NFKC, which can expand a char, builds a second one,
//! and only when the text is not already NFKC. Then the output `String` and its span map: no
//! allocation per char. About 15 M chars/s on mixed ASR and chat text in a release build.

use std::borrow::Cow;
use std::ops::Range;
use std::sync::OnceLock;

use unicode_normalization::char::{decompose_compatible, is_combining_mark};
use unicode_normalization::{IsNormalized, UnicodeNormalization, is_nfkc_quick};

/// Text after normalisation, with a map back to the original text.
#[derive(Debug, Clone)]
pub struct Normalized {
    /// The normalised text.
    text: String,
    /// One entry per char of `text`, in order; both `start` and `end` never decrease.
    spans: Vec<Span>,
    /// The number of chars in the original text.
    original_len: usize,
}

/// Where one normalised char sits and where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    /// Byte offset of the char in the normalised text.
    byte: usize,
    /// First original char (char offset) the normalised char came from.
    start: usize,
    /// One past the last original char it came from.
    end: usize,
}

impl Normalized {
    /// The normalised text (what the tokeniser and matcher see).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// A copy with the char at byte `at` replaced by `c`, keeping the offset map: used to fill
    /// a fuseji mask. Returns `None` unless `at` starts a char of the same UTF-8 length as `c`
    /// (so no other offset moves).
    pub fn with_char_at(&self, at: usize, c: char) -> Option<Normalized> {
        let old = self.text.get(at..)?.chars().next()?;
        if old.len_utf8() != c.len_utf8() {
            return None;
        }
        let mut text = self.text.clone();
        text.replace_range(at..at + old.len_utf8(), c.encode_utf8(&mut [0; 4]));
        Some(Normalized { text, spans: self.spans.clone(), original_len: self.original_len })
    }

    /// Maps a byte range of the normalised text (on char boundaries) to the range of ORIGINAL
    /// text it came from, in Unicode scalar (char) offsets of the original string. The range
    /// covers every original char that contributed to any normalised char in the range, and
    /// also any original chars that were dropped (emoji, `w`, separators, elongation marks)
    /// strictly between them, so the quoted evidence is the exact contiguous original span.
    /// Empty input range → empty range at the mapped position.
    ///
    /// Dropped chars before the first or after the last normalised char of the range are not
    /// covered (see the module doc). The empty range at the end of the normalised text maps
    /// to the end of the last normalised char's original range (0 if nothing was kept).
    /// Out-of-range offsets are clamped to the text, a reversed range is treated as empty at
    /// its end, and an offset inside a char counts that char; none of these panic.
    pub fn original_chars(&self, normalized_bytes: Range<usize>) -> Range<usize> {
        let end = normalized_bytes.end.min(self.text.len());
        let start = normalized_bytes.start.min(end);
        // `spans[0].byte == 0`, so for a non-empty text this is at least 1 and the char
        // containing `start` is the one before it.
        let first = self.spans.partition_point(|s| s.byte <= start).saturating_sub(1);
        if start == end {
            let at = match self.spans.get(first) {
                Some(s) if start < self.text.len() => s.start,
                _ => self.spans.last().map_or(0, |s| s.end),
            };
            return at..at;
        }
        // Chars starting before `end` overlap the range; the last of them ends it.
        let last = self.spans.partition_point(|s| s.byte < end).saturating_sub(1);
        match (self.spans.get(first), self.spans.get(last)) {
            // Spans are monotone (module doc), so first.start..last.end is the union.
            (Some(a), Some(b)) => a.start..b.end,
            // Unreachable: a non-empty range implies a non-empty text and valid indices.
            _ => 0..0,
        }
    }

    /// The number of chars in the original text.
    pub fn original_len_chars(&self) -> usize {
        self.original_len
    }
}

/// Normalises `text` for matching; see the module doc for the steps.
///
/// # Example
/// ```
/// use kasuhara_guard::pipeline::normalize::normalize;
///
/// let text = "おい ﾀﾋね😊よ";
/// let n = normalize(text);
/// assert_eq!(n.as_str(), "おい死ねよ");
/// // Quote the evidence for 死ね from the original text.
/// let at = n.as_str().find("死ね").unwrap_or(0);
/// let span = n.original_chars(at..at + "死ね".len());
/// let quote: String = text.chars().skip(span.start).take(span.len()).collect();
/// assert_eq!(quote, "ﾀﾋね");
/// ```
pub fn normalize(text: &str) -> Normalized {
    let original_len = text.chars().count();
    let mut pieces = Vec::with_capacity(original_len);
    pieces.extend(text.chars().enumerate().map(|(i, ch)| Piece { ch, start: i, end: i + 1 }));
    // One pass over the text says which steps any of its chars can set off; only those steps
    // look at it again (most Japanese text sets off two or three of the eleven). After a step
    // changes the text, the pass is repeated, as a later step sees the changed text.
    let triggers = Triggers::get();
    let mut pending = triggers.of_text(&pieces);
    for (i, step) in NORMALIZERS.iter().enumerate() {
        if pending & (1 << i) != 0 && step.also_needs.is_none_or(|f| f(&pieces)) {
            (step.apply)(&mut pieces);
            pending = triggers.of_text(&pieces);
        }
    }
    assemble(&pieces, original_len)
}

/// For every char, which steps it can set off: bit `i` is `NORMALIZERS[i].triggered_by`.
/// Looked up in a table for the Basic Multilingual Plane (128 KiB, built on first use, where
/// nearly all text is), worked out for other chars.
struct Triggers {
    bmp: Box<[u16]>,
}

// One bit per step.
const _: () = assert!(NORMALIZERS.len() <= u16::BITS as usize);

impl Triggers {
    fn get() -> &'static Self {
        static TABLE: OnceLock<Triggers> = OnceLock::new();
        TABLE.get_or_init(|| Triggers {
            bmp: (0..=0xFFFF).map(|u| char::from_u32(u).map_or(0, Self::work_out)).collect(),
        })
    }

    fn work_out(c: char) -> u16 {
        NORMALIZERS
            .iter()
            .enumerate()
            .filter(|(_, step)| (step.triggered_by)(c))
            .fold(0, |bits, (i, _)| bits | 1 << i)
    }

    fn of_char(&self, c: char) -> u16 {
        self.bmp.get(c as usize).copied().unwrap_or_else(|| Self::work_out(c))
    }

    fn of_text(&self, pieces: &[Piece]) -> u16 {
        pieces.iter().fold(0, |bits, p| bits | self.of_char(p.ch))
    }
}

/// Folds katakana to hiragana (ァ-ヶ → ぁ-ゖ, ヽヾ → ゝゞ; leaves ー and everything else),
/// borrowing when nothing changes.
///
/// For the matcher's reading layer (IPADIC readings are katakana, lexicons may be written in
/// either script); never applied before tokenisation, see the module doc.
pub fn fold_kana(text: &str) -> Cow<'_, str> {
    let Some(first) = text.find(|c| katakana_to_hiragana(c).is_some()) else {
        return Cow::Borrowed(text);
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..first]);
    out.extend(text[first..].chars().map(|c| katakana_to_hiragana(c).unwrap_or(c)));
    Cow::Owned(out)
}

/// The hiragana for a katakana that has one; `None` for everything else (ー, ヷ-ヺ, ...).
fn katakana_to_hiragana(c: char) -> Option<char> {
    match c {
        // The two blocks are laid out in parallel, 0x60 apart.
        'ァ'..='ヶ' | 'ヽ' | 'ヾ' => char::from_u32(c as u32 - 0x60),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------------
// The pipeline
// ---------------------------------------------------------------------------------------------

/// One char of the text being normalised and the original chars it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    ch: char,
    /// First original char (char offset).
    start: usize,
    /// One past the last original char.
    end: usize,
}

/// One normalisation step: `apply` runs only when a char of the text is `triggered_by` (asked
/// for all steps at once from a table: see `Triggers`) and, for the steps one char cannot
/// decide, the whole text `also_needs` it.
struct Step {
    #[cfg_attr(
        not(test),
        expect(dead_code, reason = "names the step in tests and their messages")
    )]
    name: &'static str,
    /// True for every char that can make the step change the text; a text without one is
    /// left alone.
    triggered_by: fn(char) -> bool,
    /// A look at the whole text after a char triggered the step (NFKC's quick check, a run
    /// needing three chars); `None` when a triggering char is enough.
    also_needs: Option<fn(&[Piece]) -> bool>,
    apply: fn(&mut Vec<Piece>),
}

impl Step {
    /// Whether the step may change `p`: what `normalize` decides with the table.
    #[cfg(test)]
    fn should_apply(&self, p: &[Piece]) -> bool {
        p.iter().any(|x| (self.triggered_by)(x.ch)) && self.also_needs.is_none_or(|f| f(p))
    }
}

/// The steps, in order; the order matters (see the module doc on idempotence).
const NORMALIZERS: &[Step] = &[
    Step {
        name: "strip_invisible",
        triggered_by: is_invisible,
        also_needs: None,
        apply: strip_invisible,
    },
    Step {
        name: "nfkc",
        triggered_by: can_change_under_nfkc,
        also_needs: Some(needs_nfkc),
        apply: nfkc,
    },
    Step {
        name: "lowercase_ascii",
        triggered_by: is_ascii_upper,
        also_needs: None,
        apply: lowercase_ascii,
    },
    Step { name: "strip_emoji", triggered_by: is_emoji, also_needs: None, apply: strip_emoji },
    Step { name: "strip_laughter", triggered_by: is_w, also_needs: None, apply: strip_laughter },
    Step {
        name: "squash_separators",
        triggered_by: is_separator_char,
        also_needs: None,
        apply: squash_separators,
    },
    Step {
        name: "fold_elongation",
        triggered_by: is_elongation,
        also_needs: None,
        apply: fold_elongation,
    },
    Step {
        name: "drop_vowel_runs",
        triggered_by: is_extension_vowel,
        also_needs: None,
        apply: drop_vowel_runs,
    },
    Step {
        name: "collapse_repeats",
        triggered_by: any_char,
        also_needs: Some(has_three),
        apply: collapse_repeats,
    },
    Step {
        name: "undo_disguises",
        triggered_by: starts_a_disguise,
        also_needs: None,
        apply: undo_disguises,
    },
    Step {
        name: "canonicalise_masks",
        triggered_by: is_mask,
        also_needs: None,
        apply: canonicalise_masks,
    },
];

/// Builds the normalised text and its offset map.
fn assemble(pieces: &[Piece], original_len: usize) -> Normalized {
    let mut text = String::with_capacity(pieces.iter().map(|p| p.ch.len_utf8()).sum());
    let mut spans = Vec::with_capacity(pieces.len());
    for p in pieces {
        spans.push(Span { byte: text.len(), start: p.start, end: p.end });
        text.push(p.ch);
    }
    debug_assert!(
        spans.windows(2).all(|w| w[0].start <= w[1].start && w[0].end <= w[1].end),
        "spans must be monotone for original_chars to take the union from the ends"
    );
    Normalized { text, spans, original_len }
}

// ---------------------------------------------------------------------------------------------
// Character classes
// ---------------------------------------------------------------------------------------------

/// The canonical fuseji mask char every mask next to a Japanese word becomes.
/// The one mask char every fuseji mask next to Japanese text becomes (see `canonicalise_masks`).
pub const MASK: char = '○';

/// Hiragana letters and iteration marks (not the combining voicing marks).
fn is_hiragana(c: char) -> bool {
    matches!(c, '\u{3041}'..='\u{3096}' | 'ゝ' | 'ゞ' | 'ゟ')
}

/// Katakana letters and iteration marks (not ー, not the middle dot).
fn is_katakana(c: char) -> bool {
    matches!(c, '\u{30A1}'..='\u{30FA}' | 'ヽ' | 'ヾ' | 'ヿ' | '\u{31F0}'..='\u{31FF}')
}

/// Kanji, including 々 and 〆, but not 〇 (a mask char as well as a numeral).
fn is_kanji(c: char) -> bool {
    matches!(
        c,
        '々' | '〆'
            | '\u{3400}'..='\u{4DBF}'
            | '\u{4E00}'..='\u{9FFF}'
            | '\u{F900}'..='\u{FAFF}'
            | '\u{20000}'..='\u{323AF}'
    )
}

/// A kana letter or a kanji: what a mask must touch to be a fuseji.
fn is_kana_or_kanji(c: char) -> bool {
    is_hiragana(c) || is_katakana(c) || is_kanji(c)
}

/// Chars that stretch the previous sound: ー, the wave dash 〜, and `~` (NFKC of ～).
fn is_elongation(c: char) -> bool {
    matches!(c, 'ー' | '\u{301C}' | '~')
}

/// Fuseji mask chars, as they look after NFKC (＊ → `*`, ＿ → `_`).
fn is_mask(c: char) -> bool {
    matches!(c, '○' | '〇' | '◯' | '●' | '◎' | '□' | '■' | '×' | '✕' | '*' | '_')
}

/// Numeral kanji: a 〇 next to one (or to a digit) is the numeral zero, not a mask.
const NUMERAL_KANJI: &[char] = &[
    '〇', '零', '一', '二', '三', '四', '五', '六', '七', '八', '九', '十', '百', '千', '万', '億',
    '兆',
];

/// Digits and numeral kanji.
fn is_numeral(c: char) -> bool {
    c.is_ascii_digit() || NUMERAL_KANJI.contains(&c)
}

/// Separators squashed between Japanese chars, besides whitespace: middle dots, underscore,
/// hyphens and dashes, slashes, dot and comma. 、 and 。 are not here: they are real
/// punctuation and help the tokeniser.
const SEPARATORS: &[char] =
    &['・', '･', '·', '‧', '•', '∙', '_', '-', '‐', '–', '—', '―', '−', '/', '\\', '.', ','];

/// Whitespace or one of [`SEPARATORS`].
fn is_separator_char(c: char) -> bool {
    c.is_whitespace() || SEPARATORS.contains(&c)
}

/// Hangul vowel and final jamo: they compose with the syllable before them.
fn is_trailing_jamo(c: char) -> bool {
    matches!(c, '\u{1160}'..='\u{11FF}')
}

/// Whether `c` belongs to the cluster of the char before it, before or after NFKC: combining
/// marks, the voicing marks (including half-width ﾞﾟ and spacing ゛゜), trailing jamo, and
/// compatibility chars whose NFKC form starts with one of those (compatibility Hangul vowels).
fn joins_previous(c: char) -> bool {
    if is_nfkc_inert(c) {
        // Fast path: these are starters that compose with nothing before them.
        return false;
    }
    if is_combining_mark(c) || is_trailing_jamo(c) || matches!(c, '\u{309B}' | '\u{309C}') {
        return true;
    }
    let mut first = None;
    decompose_compatible(c, |d| {
        first.get_or_insert(d);
    });
    first.is_some_and(|d| d != c && (is_combining_mark(d) || is_trailing_jamo(d)))
}

/// Whether the char at `i` carries a mark (the next char joins it). Such a char is never
/// changed or removed after NFKC, or a second NFKC could compose the mark differently.
fn carries_mark(p: &[Piece], i: usize) -> bool {
    p.get(i + 1).is_some_and(|n| joins_previous(n.ch))
}

// ---------------------------------------------------------------------------------------------
// Step 1: invisible chars
// ---------------------------------------------------------------------------------------------

/// Control chars other than whitespace, and invisible format chars that disguise words
/// (し\u{200B}ね): zero-width space/joiners, bidi marks, word joiner, BOM, soft hyphen,
/// variation selectors and tags. Variation selectors are removed here rather than with the
/// emoji because a selector between a base and a mark blocks NFKC composition.
///
/// Also the supplementary private-use planes (U+F0000 up), which no font renders: the matcher
/// encodes its token ids there, so text reaching it must not contain them.
fn is_invisible(c: char) -> bool {
    (c.is_control() && !c.is_whitespace())
        || matches!(
            c,
            '\u{00AD}'
                | '\u{180E}'
                | '\u{200B}'..='\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{2069}'
                | '\u{FEFF}'
                | '\u{FE00}'..='\u{FE0F}'
                | '\u{E0000}'..='\u{E007F}'
                | '\u{E0100}'..='\u{E01EF}'
                | '\u{F0000}'..='\u{10FFFF}'
        )
}

/// Removes invisible chars (runs before NFKC, so marks they separated compose).
fn strip_invisible(p: &mut Vec<Piece>) {
    p.retain(|x| !is_invisible(x.ch));
}

// ---------------------------------------------------------------------------------------------
// Step 2: NFKC
// ---------------------------------------------------------------------------------------------

/// A char NFKC may change, alone or with the chars around it.
fn can_change_under_nfkc(c: char) -> bool {
    !is_nfkc_inert(c)
}

fn needs_nfkc(p: &[Piece]) -> bool {
    // Inert chars are starters that NFKC keeps, so leaving them out of the quick check can
    // only make it stricter (their class-0 resets no longer separate combining marks): a
    // "yes" still means the text is NFKC, and most of a Japanese text is skipped unlooked-up.
    is_nfkc_quick(p.iter().map(|x| x.ch).filter(|&c| !is_nfkc_inert(c))) != IsNormalized::Yes
}

/// Spacing voicing marks ゛゜ become the combining ones, so か゛ composes to が like ｶﾞ does
/// (plain NFKC would give か + space + mark).
fn combining_voicing(c: char) -> char {
    match c {
        '\u{309B}' => '\u{3099}',
        '\u{309C}' => '\u{309A}',
        _ => c,
    }
}

/// Chars that are NFKC on their own (ASCII, common kana and kanji): the fast path, which
/// skips the normaliser's setup for most chars.
fn is_nfkc_inert(c: char) -> bool {
    c.is_ascii()
        || matches!(c, '\u{3041}'..='\u{3096}' | '\u{30A1}'..='\u{30FA}' | '\u{4E00}'..='\u{9FFF}')
}

/// NFKC, cluster by cluster, so every output char maps to its cluster's original range.
/// Composition never crosses a cluster boundary (a cluster starts at a char that does not
/// join the one before), so this equals NFKC of the whole text.
fn nfkc(p: &mut Vec<Piece>) {
    let src = std::mem::take(p);
    p.reserve(src.len());
    let mut i = 0;
    while i < src.len() {
        let mut j = i + 1;
        while j < src.len() && joins_previous(src[j].ch) {
            j += 1;
        }
        let cluster = &src[i..j];
        if let [one] = cluster
            && is_nfkc_inert(one.ch)
        {
            p.push(*one);
        } else if let (Some(first), Some(last)) = (cluster.first(), cluster.last()) {
            let (start, end) = (first.start, last.end);
            let normal = cluster.iter().map(|x| combining_voicing(x.ch)).nfkc();
            p.extend(normal.map(|ch| Piece { ch, start, end }));
        }
        i = j;
    }
}

// ---------------------------------------------------------------------------------------------
// Step 3: ASCII lower-case
// ---------------------------------------------------------------------------------------------

fn is_ascii_upper(c: char) -> bool {
    c.is_ascii_uppercase()
}

/// A-Z → a-z, so SHINE, Shine and ＳＨＩＮＥ meet. Other scripts are left alone: lexicons
/// are Japanese, and full Unicode case folding would change lengths for nothing.
#[expect(clippy::ptr_arg, reason = "every step has the signature of `Step::apply`")]
fn lowercase_ascii(p: &mut Vec<Piece>) {
    for i in 0..p.len() {
        if p[i].ch.is_ascii_uppercase() && !carries_mark(p, i) {
            p[i].ch = p[i].ch.to_ascii_lowercase();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Step 4: emoji
// ---------------------------------------------------------------------------------------------

/// Emoji and pictograph blocks (skin tones and regional indicators included); ✕ is in the
/// dingbats block but is a mask char, kept for step 11.
fn is_emoji(c: char) -> bool {
    matches!(c, '\u{1F000}'..='\u{1FAFF}' | '\u{2600}'..='\u{27BF}' | '\u{2B00}'..='\u{2BFF}')
        && !is_mask(c)
}

/// Removes emoji (死ね😊 → 死ね; 死☆ね → 死ね) with any marks attached to them (keycaps).
fn strip_emoji(p: &mut Vec<Piece>) {
    let n = p.len();
    let (mut r, mut w) = (0_usize, 0_usize);
    while r < n {
        if is_emoji(p[r].ch) {
            r += 1;
            while r < n && joins_previous(p[r].ch) {
                r += 1;
            }
            continue;
        }
        p[w] = p[r];
        w += 1;
        r += 1;
    }
    p.truncate(w);
}

// ---------------------------------------------------------------------------------------------
// Step 5: laughter
// ---------------------------------------------------------------------------------------------

fn is_w(c: char) -> bool {
    c == 'w'
}

/// Whether the text before a `w` run (`out`, already processed) lets it be laughter: the
/// nearest char that is not whitespace, a separator or ASCII punctuation is non-ASCII or
/// absent (死ねwww, じゃねーの？ｗ, 草 www). Whitespace, separators, `~`, `*` and `_` may be
/// removed or become ○ later, so looking past them now gives the verdict a second pass would
/// give; `!` and `?` (NFKC of ！？) end sentences that laughter often follows.
fn laughter_left(out: &[Piece]) -> bool {
    let skipped = |c: char| is_separator_char(c) || c.is_ascii_punctuation();
    out.iter().rev().map(|x| x.ch).find(|&c| !skipped(c)).is_none_or(|c| !c.is_ascii())
}

/// Whether the char after a `w` run lets it be laughter: the end, whitespace, a non-ASCII
/// char, or ASCII punctuation that cannot continue a URL or identifier (`.` `-` `/` `:` `@`).
fn laughter_right(next: Option<char>) -> bool {
    next.is_none_or(|c| {
        !joins_previous(c)
            && (c.is_whitespace()
                || !c.is_ascii()
                || (c.is_ascii_punctuation() && !matches!(c, '.' | '-' | '/' | ':' | '@')))
    })
}

/// Removes `w` runs used as laughter (死ねwww, 草w, a lone ｗｗ): a run that follows
/// Japanese text or the start, and ends the word. A `w` in an ASCII word (www.example,
/// wifi, windows) stays.
fn strip_laughter(p: &mut Vec<Piece>) {
    let n = p.len();
    let (mut r, mut w) = (0_usize, 0_usize);
    while r < n {
        if p[r].ch != 'w' {
            p[w] = p[r];
            w += 1;
            r += 1;
            continue;
        }
        let mut end = r;
        while end < n && p[end].ch == 'w' {
            end += 1;
        }
        // `laughter_right` refuses a following mark, so a run whose last w carries one stays.
        if laughter_left(&p[..w]) && laughter_right(p.get(end).map(|x| x.ch)) {
            r = end;
            continue;
        }
        while r < end {
            p[w] = p[r];
            w += 1;
            r += 1;
        }
    }
    p.truncate(w);
}

// ---------------------------------------------------------------------------------------------
// Step 6: separators
// ---------------------------------------------------------------------------------------------

fn is_separator_at(p: &[Piece], i: usize) -> bool {
    is_separator_char(p[i].ch) && !carries_mark(p, i)
}

/// Whether `c` counts as Japanese on either side of a separator: kana, kanji, and the chars
/// later steps remove after kana or turn into Japanese (ー 〜 ~, masks); see the module doc.
fn is_japanese_side(c: char) -> bool {
    is_kana_or_kanji(c) || is_elongation(c) || is_mask(c)
}

/// Removes a run of whitespace and separators between two Japanese chars (し ね, バ・カ,
/// 死.ね, し　ね): Japanese is written without spaces (ASR puts them at pauses) and spacing or
/// dotting a word out is a common disguise. Elsewhere whitespace runs become one space and the
/// ends are trimmed; the other separators stay (www.example.com, 3 - 4).
fn squash_separators(p: &mut Vec<Piece>) {
    let n = p.len();
    let (mut r, mut w) = (0_usize, 0_usize);
    while r < n {
        if !is_separator_at(p, r) {
            p[w] = p[r];
            w += 1;
            r += 1;
            continue;
        }
        let mut end = r;
        while end < n && is_separator_at(p, end) {
            end += 1;
        }
        let left = w > 0 && is_japanese_side(p[w - 1].ch);
        // A `4` before ね will become 死 in step 10, so it already counts as Japanese here.
        let right = end < n
            && (is_japanese_side(p[end].ch)
                || (p[end].ch == '4' && p.get(end + 1).is_some_and(|x| x.ch == 'ね')));
        if left && right {
            r = end;
            continue;
        }
        while r < end {
            if !p[r].ch.is_whitespace() {
                p[w] = p[r];
                w += 1;
                r += 1;
                continue;
            }
            let mut k = r;
            while k < end && p[k].ch.is_whitespace() {
                k += 1;
            }
            // Leading and trailing whitespace is trimmed; inner runs become one space that
            // covers the whole run.
            if w > 0 && k < n {
                p[w] = Piece { ch: ' ', start: p[r].start, end: p[k - 1].end };
                w += 1;
            }
            r = k;
        }
    }
    p.truncate(w);
}

// ---------------------------------------------------------------------------------------------
// Step 7: elongation marks
// ---------------------------------------------------------------------------------------------

/// A run of ー 〜 ~ after hiragana is removed (あのさー → あのさ, ころすーー → ころす): hiragana
/// words rarely carry ー, so it is only drawl. After katakana the run becomes one ー (カーーー →
/// カー) because katakana words do carry it (ケーブル). Anywhere else it stays (10~20).
fn fold_elongation(p: &mut Vec<Piece>) {
    let n = p.len();
    let (mut r, mut w) = (0_usize, 0_usize);
    while r < n {
        let is_run_start = is_elongation(p[r].ch) && !carries_mark(p, r);
        let prev = w.checked_sub(1).map(|k| p[k].ch);
        if !is_run_start || !prev.is_some_and(|c| is_hiragana(c) || is_katakana(c)) {
            p[w] = p[r];
            w += 1;
            r += 1;
            continue;
        }
        let mut end = r;
        while end < n && is_elongation(p[end].ch) && !carries_mark(p, end) {
            end += 1;
        }
        if prev.is_some_and(is_katakana) {
            p[w] = Piece { ch: 'ー', start: p[r].start, end: p[end - 1].end };
            w += 1;
        }
        r = end;
    }
    p.truncate(w);
}

// ---------------------------------------------------------------------------------------------
// Step 8: vowel runs
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Vowel {
    A,
    I,
    U,
    E,
    O,
}

/// The vowel a kana ends in (か → A, きゃ's ゃ → A); `None` for ん, っ, ー and non-kana.
fn vowel_of(c: char) -> Option<Vowel> {
    let h = katakana_to_hiragana(c).unwrap_or(c);
    Some(match h {
        'ぁ' | 'あ' | 'か' | 'が' | 'さ' | 'ざ' | 'た' | 'だ' | 'な' | 'は' | 'ば' | 'ぱ'
        | 'ま' | 'ゃ' | 'や' | 'ら' | 'ゎ' | 'わ' | 'ゕ' => Vowel::A,
        'ぃ' | 'い' | 'き' | 'ぎ' | 'し' | 'じ' | 'ち' | 'ぢ' | 'に' | 'ひ' | 'び' | 'ぴ'
        | 'み' | 'り' | 'ゐ' => Vowel::I,
        'ぅ' | 'う' | 'く' | 'ぐ' | 'す' | 'ず' | 'つ' | 'づ' | 'ぬ' | 'ふ' | 'ぶ' | 'ぷ'
        | 'む' | 'ゅ' | 'ゆ' | 'る' | 'ゔ' => Vowel::U,
        'ぇ' | 'え' | 'け' | 'げ' | 'せ' | 'ぜ' | 'て' | 'で' | 'ね' | 'へ' | 'べ' | 'ぺ'
        | 'め' | 'れ' | 'ゑ' | 'ゖ' => Vowel::E,
        'ぉ' | 'お' | 'こ' | 'ご' | 'そ' | 'ぞ' | 'と' | 'ど' | 'の' | 'ほ' | 'ぼ' | 'ぽ'
        | 'も' | 'ょ' | 'よ' | 'ろ' | 'を' => Vowel::O,
        _ => return None,
    })
}

/// A vowel that can stretch the kana before it: plain hiragana あいうえお (`false`) or a small
/// vowel ぁぃぅぇぉ/ァィゥェォ (`true`).
fn extension_vowel(c: char) -> Option<(Vowel, bool)> {
    Some(match c {
        'あ' => (Vowel::A, false),
        'い' => (Vowel::I, false),
        'う' => (Vowel::U, false),
        'え' => (Vowel::E, false),
        'お' => (Vowel::O, false),
        'ぁ' | 'ァ' => (Vowel::A, true),
        'ぃ' | 'ィ' => (Vowel::I, true),
        'ぅ' | 'ゥ' => (Vowel::U, true),
        'ぇ' | 'ェ' => (Vowel::E, true),
        'ぉ' | 'ォ' => (Vowel::O, true),
        _ => return None,
    })
}

fn is_extension_vowel(c: char) -> bool {
    extension_vowel(c).is_some()
}

/// After a kana, a run of vowels repeating its vowel is removed when it is two or more long or
/// contains a small vowel (しねええ → しね, ばかああ → ばか, しねぇ → しね, シネェ → シネ; a
/// small katakana vowel only after katakana): that is drawl. One plain vowel stays, since it is
/// normal spelling (おおきい, いいえ, しねえ); small vowels with a different vowel make real
/// syllables and stay (ファ, ティ, ちぇ).
fn drop_vowel_runs(p: &mut Vec<Piece>) {
    let n = p.len();
    let (mut r, mut w) = (0_usize, 0_usize);
    while r < n {
        let kana = p[r];
        p[w] = kana;
        w += 1;
        r += 1;
        let Some(vowel) = vowel_of(kana.ch) else { continue };
        let (mut end, mut small) = (r, false);
        while end < n
            && !carries_mark(p, end)
            && let Some((v, is_small)) = extension_vowel(p[end].ch)
            && v == vowel
            // A small katakana vowel only stretches katakana: after hiragana, removing it
            // would leave a following ー (kept after katakana) behind hiragana, where step 7
            // would remove it on a second pass.
            && (is_hiragana(p[end].ch) || is_katakana(kana.ch))
        {
            small |= is_small;
            end += 1;
        }
        if end - r >= 2 || small {
            r = end;
        }
    }
    p.truncate(w);
}

// ---------------------------------------------------------------------------------------------
// Step 9: repeats
// ---------------------------------------------------------------------------------------------

/// Any char can start a repeated run; `has_three` decides.
fn any_char(_: char) -> bool {
    true
}

fn has_three(p: &[Piece]) -> bool {
    p.len() >= 3
}

/// A kana letter (not ー) repeated three or more times becomes one, which covers the run
/// (ええええ → え, っっっ → っ): shouting and stammering, never spelling. Two stay (ああ, ここ).
fn collapse_repeats(p: &mut Vec<Piece>) {
    let n = p.len();
    let (mut r, mut w) = (0_usize, 0_usize);
    while r < n {
        let c = p[r].ch;
        let mut end = r + 1;
        if c != 'ー' && (is_hiragana(c) || is_katakana(c)) {
            while end < n && p[end].ch == c {
                end += 1;
            }
            if carries_mark(p, end - 1) {
                end -= 1;
            }
        }
        if end - r >= 3 {
            p[w] = Piece { ch: c, start: p[r].start, end: p[end - 1].end };
            r = end;
        } else {
            p[w] = p[r];
            r += 1;
        }
        w += 1;
    }
    p.truncate(w);
}

// ---------------------------------------------------------------------------------------------
// Step 10: fixed disguises
// ---------------------------------------------------------------------------------------------

/// A fixed disguised spelling: `from` becomes the single char `to` when `applies` holds for
/// the char before (already normalised) and the chars after (`rest`).
struct Disguise {
    from: &'static str,
    to: char,
    applies: fn(before: Option<char>, rest: &[Piece]) -> bool,
}

/// Fixed disguises, tried in order at each position; add rows here.
const DISGUISES: &[Disguise] = &[
    // タヒ looks like 死 written sideways: タヒね, タヒんで, タヒぬ, タヒにたい (not タヒチ).
    Disguise { from: "タヒ", to: '死', applies: before_shi_ending },
    // 氏 (shi) for 死 (shi): 氏ね, 氏ねよ, 早く氏ね; not the honorific after a name written in
    // kanji or katakana (佐藤氏ね、あの人は丁寧だった), the dev corpus's trap.
    Disguise { from: "氏", to: '死', applies: before_ne_not_after_name },
    // 4 (shi) for 死: 4ね, 4ねよ; not 14ね, a4ね, nor 4ねん (four years).
    Disguise { from: "4", to: '死', applies: four_as_shi },
    // 市 (shi) for 死, like 氏: 市ね; not 都市ね (after kanji).
    Disguise { from: "市", to: '死', applies: before_ne_not_after_name },
];

fn next_char(rest: &[Piece], i: usize) -> Option<char> {
    rest.get(i).map(|x| x.ch)
}

fn before_shi_ending(_before: Option<char>, rest: &[Piece]) -> bool {
    matches!(next_char(rest, 0), Some('ね' | 'ぬ' | 'ん' | 'に' | 'ネ'))
}

fn before_ne_not_after_name(before: Option<char>, rest: &[Piece]) -> bool {
    !before.is_some_and(|c| is_kanji(c) || is_katakana(c)) && next_char(rest, 0) == Some('ね')
}

fn four_as_shi(before: Option<char>, rest: &[Piece]) -> bool {
    !before.is_some_and(|c| c.is_ascii_alphanumeric())
        && next_char(rest, 0) == Some('ね')
        && next_char(rest, 1) != Some('ん')
}

fn starts_a_disguise(c: char) -> bool {
    DISGUISES.iter().any(|d| d.from.starts_with(c))
}

/// The number of chars of `from` found at `at`, none of them carrying a mark.
fn disguise_at(p: &[Piece], at: usize, from: &str) -> Option<usize> {
    let mut len = 0;
    for c in from.chars() {
        let piece = p.get(at + len)?;
        if piece.ch != c || carries_mark(p, at + len) {
            return None;
        }
        len += 1;
    }
    (len > 0).then_some(len)
}

/// Replaces the fixed disguised spellings of `DISGUISES` (タヒね → 死ね, 氏ね → 死ね, 4ね →
/// 死ね); シネ is left to the matcher's kana folding.
fn undo_disguises(p: &mut Vec<Piece>) {
    let n = p.len();
    let (mut r, mut w) = (0_usize, 0_usize);
    'chars: while r < n {
        for d in DISGUISES {
            let Some(len) = disguise_at(p, r, d.from) else { continue };
            let before = w.checked_sub(1).map(|k| p[k].ch);
            if (d.applies)(before, &p[r + len..]) {
                p[w] = Piece { ch: d.to, start: p[r].start, end: p[r + len - 1].end };
                w += 1;
                r += len;
                continue 'chars;
            }
        }
        p[w] = p[r];
        w += 1;
        r += 1;
    }
    p.truncate(w);
}

// ---------------------------------------------------------------------------------------------
// Step 11: fuseji masks
// ---------------------------------------------------------------------------------------------

fn is_mask_at(p: &[Piece], i: usize) -> bool {
    is_mask(p[i].ch) && !carries_mark(p, i)
}

/// A run of mask chars touching a kana or kanji becomes as many ○ (馬〇 → 馬○, こ●す → こ○す,
/// ぶっ**す → ぶっ○○す), so one lexicon spelling covers every mask. Masks away from Japanese
/// stay (3×4, **), and a run with 〇 next to a digit or numeral kanji stays, as 〇 is then the
/// numeral zero (二〇二五年).
#[expect(clippy::ptr_arg, reason = "every step has the signature of `Step::apply`")]
fn canonicalise_masks(p: &mut Vec<Piece>) {
    let n = p.len();
    let mut i = 0;
    while i < n {
        if !is_mask_at(p, i) {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < n && is_mask_at(p, end) {
            end += 1;
        }
        let before = i.checked_sub(1).map(|k| p[k].ch);
        let after = p.get(end).map(|x| x.ch);
        let beside_word =
            before.is_some_and(is_kana_or_kanji) || after.is_some_and(is_kana_or_kanji);
        let numeral = p[i..end].iter().any(|x| x.ch == '〇')
            && (before.is_some_and(is_numeral) || after.is_some_and(is_numeral));
        if beside_word && !numeral {
            for x in &mut p[i..end] {
                x.ch = MASK;
            }
        }
        i = end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// One table row: a name saying why the case matters, the input, the expected output.
    struct Row {
        name: &'static str,
        input: &'static str,
        expected: &'static str,
    }

    macro_rules! t {
        ($name:expr, $input:expr, $expected:expr) => {
            Row { name: $name, input: $input, expected: $expected }
        };
    }

    fn pieces_of(text: &str) -> Vec<Piece> {
        text.chars().enumerate().map(|(i, ch)| Piece { ch, start: i, end: i + 1 }).collect()
    }

    fn step(name: &str) -> &'static Step {
        let found = NORMALIZERS.iter().find(|s| s.name == name);
        // Invariant: tests only name steps that exist in NORMALIZERS.
        found.expect("help: the step name must be one of NORMALIZERS")
    }

    /// Runs one step alone (gate included), as the pipeline would.
    fn run_step(name: &str, input: &str) -> String {
        let s = step(name);
        let mut p = pieces_of(input);
        if s.should_apply(&p) {
            (s.apply)(&mut p);
        }
        p.iter().map(|x| x.ch).collect()
    }

    fn check_step(name: &str, rows: &[Row]) {
        for row in rows {
            let got = run_step(name, row.input);
            assert_eq!(
                got, row.expected,
                "{name} / {}: input {:?}; help: see the doc of `{name}` for the rule",
                row.name, row.input
            );
        }
    }

    /// The original text covered by the first occurrence of `needle` in the normalised text.
    fn evidence(input: &str, needle: &str) -> String {
        let n = normalize(input);
        let at = n.as_str().find(needle);
        // Invariant: rows only ask for needles their normalised text contains.
        let at = at.unwrap_or_else(|| panic!("help: {needle:?} not in {:?}", n.as_str()));
        let r = n.original_chars(at..at + needle.len());
        input.chars().skip(r.start).take(r.len()).collect()
    }

    /// The step order is load-bearing (module doc, Idempotence); changing it must be deliberate.
    #[test]
    fn steps_are_in_documented_order() {
        let names: Vec<_> = NORMALIZERS.iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            [
                "strip_invisible",
                "nfkc",
                "lowercase_ascii",
                "strip_emoji",
                "strip_laughter",
                "squash_separators",
                "fold_elongation",
                "drop_vowel_runs",
                "collapse_repeats",
                "undo_disguises",
                "canonicalise_masks",
            ],
            "help: the order is part of the idempotence argument in the module doc; update both"
        );
    }

    /// Invisible chars are pure disguise; whitespace must survive for step 6 to judge.
    const STRIP_INVISIBLE: &[Row] = &[
        t!("zero-width space hides a word", "し\u{200B}ね", "しね"),
        t!("BOM and ZWJ", "\u{FEFF}死\u{200D}ね", "死ね"),
        t!("word joiner", "ば\u{2060}か", "ばか"),
        t!("soft hyphen", "ば\u{00AD}か", "ばか"),
        t!("control char", "あ\u{0007}い", "あい"),
        t!("variation selector", "死\u{FE0F}ね", "死ね"),
        t!("matcher's layer separator", "死\u{1}ね", "死ね"),
        t!("matcher's private-use token ids", "死\u{F0001}ね\u{10FFFD}", "死ね"),
        t!("whitespace is kept for later steps", "し ね\tよ\n", "し ね\tよ\n"),
        t!("plain text untouched", "バカンス", "バカンス"),
    ];

    /// Every row of `STRIP_INVISIBLE` through `strip_invisible` alone.
    #[test]
    fn step_strip_invisible() {
        check_step("strip_invisible", STRIP_INVISIBLE);
    }

    /// Width variants and decomposed kana must meet the forms lexicons and IPADIC use.
    const NFKC: &[Row] = &[
        t!("half-width katakana", "ﾀﾋね", "タヒね"),
        t!("half-width voiced mark composes", "ﾊﾞｶ", "バカ"),
        t!("half-width semi-voiced mark", "ﾊﾟﾝ", "パン"),
        t!("full-width ASCII", "ＡＢＣ１２３", "ABC123"),
        t!("full-width w", "ｗｗ", "ww"),
        t!("combining voicing mark composes", "か\u{3099}", "が"),
        t!("spacing voicing mark composes", "か゛", "が"),
        t!("composed stays composed (NFKC, not NFKD)", "が", "が"),
        t!("ideographic space", "し\u{3000}ね", "し ね"),
        t!("full-width tilde", "ね～", "ね~"),
        t!("compatibility square", "㍿", "株式会社"),
        t!("katakana loanword untouched", "バカンス", "バカンス"),
        t!("trap: 3×4 untouched", "3×4", "3×4"),
    ];

    /// Every row of `NFKC` through `nfkc` alone.
    #[test]
    fn step_nfkc() {
        check_step("nfkc", NFKC);
    }

    /// Case must not split lexicon entries written in romaji or English.
    const LOWERCASE_ASCII: &[Row] = &[
        t!("upper", "SHINE", "shine"),
        t!("mixed", "Windows", "windows"),
        t!("non-ASCII untouched", "ÀΣ", "ÀΣ"),
        t!("Japanese untouched", "死ね", "死ね"),
    ];

    /// Every row of `LOWERCASE_ASCII` through `lowercase_ascii` alone.
    #[test]
    fn step_lowercase_ascii() {
        check_step("lowercase_ascii", LOWERCASE_ASCII);
    }

    /// Emoji decorate or disguise (死☆ね) and never carry lexicon content.
    const STRIP_EMOJI: &[Row] = &[
        t!("trailing emoji", "死ね😊", "死ね"),
        t!("skin tone", "👍🏻", ""),
        t!("star inside a word", "死☆ね", "死ね"),
        t!("keycap mark goes with its emoji", "あ\u{1F51F}\u{20E3}い", "あい"),
        t!("✕ is a mask, not an emoji", "こ✕す", "こ✕す"),
        t!("trap: × untouched", "3×4", "3×4"),
    ];

    /// Every row of `STRIP_EMOJI` through `strip_emoji` alone.
    #[test]
    fn step_strip_emoji() {
        check_step("strip_emoji", STRIP_EMOJI);
    }

    /// ｗ after Japanese is laughter; w in ASCII words is content.
    const STRIP_LAUGHTER: &[Row] = &[
        t!("after Japanese", "死ねwww", "死ね"),
        t!("single w", "草w", "草"),
        t!("alone", "www", ""),
        t!("before Japanese", "wwwあ", "あ"),
        t!("after a space", "おい www", "おい "),
        t!("before punctuation", "死ねwww!", "死ね!"),
        t!("after a question mark", "じゃねーの?w", "じゃねーの?"),
        t!("trap: URL", "www.example.com", "www.example.com"),
        t!("trap: wifi", "wifi", "wifi"),
        t!("trap: windows", "windows", "windows"),
        t!("trap: ASCII word after Japanese", "あwifi", "あwifi"),
        t!("trap: after an ASCII word", "a www", "a www"),
        t!("trap: before a hyphen", "あwww-い", "あwww-い"),
    ];

    /// Every row of `STRIP_LAUGHTER` through `strip_laughter` alone.
    #[test]
    fn step_strip_laughter() {
        check_step("strip_laughter", STRIP_LAUGHTER);
    }

    /// Spaced-out or dotted-out words are a disguise; spaces between ASCII words are content.
    const SQUASH_SEPARATORS: &[Row] = &[
        t!("space", "し ね", "しね"),
        t!("ideographic space", "し\u{3000}ね", "しね"),
        t!("middle dot", "バ・カ", "バカ"),
        t!("dot", "死.ね", "死ね"),
        t!("underscore", "ば_か", "ばか"),
        t!("mixed run", "し ・ ね", "しね"),
        t!("ASR pause", "お前 ふざけんな", "お前ふざけんな"),
        t!("ASCII words keep one space", "hello   world", "hello world"),
        t!("trimmed", "  あ  ", "あ"),
        t!("between Japanese and ASCII", "あ  b", "あ b"),
        t!("before a 4 that becomes 死", "お前 4ね", "お前4ね"),
        t!("real punctuation stays", "あ、い。", "あ、い。"),
        t!("trap: URL", "www.example.com", "www.example.com"),
        t!("trap: arithmetic", "3 - 4", "3 - 4"),
    ];

    /// Every row of `SQUASH_SEPARATORS` through `squash_separators` alone.
    #[test]
    fn step_squash_separators() {
        check_step("squash_separators", SQUASH_SEPARATORS);
    }

    /// Drawl after hiragana is noise; ー is part of katakana words.
    const FOLD_ELONGATION: &[Row] = &[
        t!("after hiragana", "あのさー", "あのさ"),
        t!("run after hiragana", "ころすーー", "ころす"),
        t!("tilde after hiragana", "しね~", "しね"),
        t!("wave dash after hiragana", "しね\u{301C}", "しね"),
        t!("run after katakana", "カーーー", "カー"),
        t!("tilde after katakana", "カ~", "カー"),
        t!("trap: katakana word", "ケーブル", "ケーブル"),
        t!("trap: range", "10~20", "10~20"),
        t!("after kanji untouched", "死ー", "死ー"),
    ];

    /// Every row of `FOLD_ELONGATION` through `fold_elongation` alone.
    #[test]
    fn step_fold_elongation() {
        check_step("fold_elongation", FOLD_ELONGATION);
    }

    /// Stretched vowels (しねええ) must meet the plain word; one extra vowel is spelling.
    const DROP_VOWEL_RUNS: &[Row] = &[
        t!("two repeated vowels", "しねええ", "しね"),
        t!("ころすうう", "ころすうう", "ころす"),
        t!("ばかああ", "ばかああ", "ばか"),
        t!("small vowel", "しねぇ", "しね"),
        t!("yoon", "きゃああ", "きゃ"),
        t!("after katakana", "バカああ", "バカ"),
        t!("small katakana after katakana", "シネェ", "シネ"),
        t!("small katakana after hiragana stays", "かァー", "かァー"),
        t!("trap: one vowel is spelling", "しねえ", "しねえ"),
        t!("trap: おおきい", "おおきい", "おおきい"),
        t!("trap: いいえ", "いいえ", "いいえ"),
        t!("trap: ファイル", "ファイル", "ファイル"),
        t!("trap: ティ", "パーティ", "パーティ"),
        t!("trap: ちぇ", "ちぇっ", "ちぇっ"),
    ];

    /// Every row of `DROP_VOWEL_RUNS` through `drop_vowel_runs` alone.
    #[test]
    fn step_drop_vowel_runs() {
        check_step("drop_vowel_runs", DROP_VOWEL_RUNS);
    }

    /// Shouted or stammered repeats must meet the plain word.
    const COLLAPSE_REPEATS: &[Row] = &[
        t!("vowel", "ええええ", "え"),
        t!("sokuon", "ぶっっっころす", "ぶっころす"),
        t!("katakana", "アアア", "ア"),
        t!("trap: two stay", "ここ", "ここ"),
        t!("trap: おおきい", "おおきい", "おおきい"),
        t!("not kana", "wwww", "wwww"),
        t!("not ー", "ーーー", "ーーー"),
    ];

    /// Every row of `COLLAPSE_REPEATS` through `collapse_repeats` alone.
    #[test]
    fn step_collapse_repeats() {
        check_step("collapse_repeats", COLLAPSE_REPEATS);
    }

    /// Fixed disguised spellings of 死 that no other step can see through.
    const UNDO_DISGUISES: &[Row] = &[
        t!("タヒね", "タヒね", "死ね"),
        t!("タヒんで", "タヒんで", "死んで"),
        t!("タヒネ", "タヒネ", "死ネ"),
        t!("氏ね", "氏ねよ", "死ねよ"),
        t!("氏ね after hiragana", "早く氏ね", "早く死ね"),
        t!("trap: honorific after a kanji name", "佐藤氏ね、あの人", "佐藤氏ね、あの人"),
        t!("trap: honorific after a katakana name", "スミス氏ね", "スミス氏ね"),
        t!("4ね", "4ねよ", "死ねよ"),
        t!("4ね after Japanese", "お前4ね", "お前死ね"),
        t!("trap: Tahiti", "タヒチ", "タヒチ"),
        t!("trap: 氏名", "氏名", "氏名"),
        t!("trap: 14ね", "14ね", "14ね"),
        t!("trap: a4ね", "a4ね", "a4ね"),
        t!("trap: 4ねん is four years", "4ねんまえ", "4ねんまえ"),
        t!("市ね", "市ねよ", "死ねよ"),
        t!("trap: 都市ね", "大都市ね", "大都市ね"),
        t!("シネ is left to the matcher", "シネ", "シネ"),
    ];

    /// Every row of `UNDO_DISGUISES` through `undo_disguises` alone.
    #[test]
    fn step_undo_disguises() {
        check_step("undo_disguises", UNDO_DISGUISES);
    }

    /// One mask char so one lexicon spelling covers every fuseji.
    const CANONICALISE_MASKS: &[Row] = &[
        t!("numeral zero as mask", "馬〇", "馬○"),
        t!("black circle", "こ●す", "こ○す"),
        t!("already canonical", "○ね", "○ね"),
        t!("asterisks", "ぶっ**す", "ぶっ○○す"),
        t!("cross", "×ね", "○ね"),
        t!("〇〇様", "〇〇様", "○○様"),
        t!("trap: arithmetic", "3×4", "3×4"),
        t!("trap: year", "二〇二五年", "二〇二五年"),
        t!("trap: 〇 next to a digit", "1〇ね", "1〇ね"),
        t!("trap: ASCII", "a*b", "a*b"),
        t!("trap: alone", "**", "**"),
    ];

    /// Every row of `CANONICALISE_MASKS` through `canonicalise_masks` alone.
    #[test]
    fn step_canonicalise_masks() {
        check_step("canonicalise_masks", CANONICALISE_MASKS);
    }

    /// The whole pipeline: the brief's examples and the traps that must not change.
    const PIPELINE: &[Row] = &[
        t!("evidence example", "おい ﾀﾋね😊よ", "おい死ねよ"),
        t!("spaced", "し ね", "しね"),
        t!("dotted", "バ・カ", "バカ"),
        t!("drawl", "ころすーー", "ころす"),
        t!("laughter", "死ねwww", "死ね"),
        t!("full-width laughter", "死ねｗｗｗ", "死ね"),
        t!("mask", "馬〇", "馬○"),
        t!("mask after NFKC", "こ＊す", "こ○す"),
        t!("half-width", "ﾊﾞｶ", "バカ"),
        t!("full-width romaji", "ＳＨＩＮＥ", "shine"),
        t!("stretched", "しねええええ", "しね"),
        t!("wave dash", "しね～～", "しね"),
        t!("katakana wave dash", "カ～～", "カー"),
        t!("zero-width", "し\u{200B}ね", "しね"),
        t!("氏ね", "氏ねよ", "死ねよ"),
        t!("4ね spaced", "お前 4ね", "お前死ね"),
        t!("タヒ spaced", "タ ヒ ね", "死ね"),
        t!("ideographic space", "し　ね", "しね"),
        t!("empty", "", ""),
        t!("only spaces", "   ", ""),
        t!("only laughter", "ｗｗｗ", ""),
        t!("trap: バカンス", "バカンス", "バカンス"),
        t!("trap: ケーブル", "ケーブル", "ケーブル"),
        t!("trap: おおきい", "おおきい", "おおきい"),
        t!("trap: ファイル", "ファイル", "ファイル"),
        t!("trap: URL", "www.example.com", "www.example.com"),
        t!("trap: 3×4", "3×4", "3×4"),
        t!("trap: year", "二〇二五年", "二〇二五年"),
        t!("trap: windows", "Ｗｉｎｄｏｗｓ", "windows"),
        t!("laughter after ？", "バ カ じゃねーの？ｗ", "バカじゃねの?"),
        t!("trap: honorific 氏", "佐藤氏ね、あの人", "佐藤氏ね、あの人"),
    ];

    /// Every row of `PIPELINE` through `normalize`.
    #[test]
    fn normalize_whole_pipeline() {
        for row in PIPELINE {
            let got = normalize(row.input);
            assert_eq!(
                got.as_str(),
                row.expected,
                "{}: normalize({:?}); help: run the steps one by one to see which differs",
                row.name,
                row.input
            );
        }
    }

    /// (input, normalised needle, original evidence): spans cover what was matched and the
    /// drops strictly inside it, not the drops around it.
    const EVIDENCE: &[(&str, &str, &str)] = &[
        // (input, normalised needle, original evidence)
        ("おい ﾀﾋね😊よ", "死ね", "ﾀﾋね"),
        ("おい ﾀﾋね😊よ", "死ねよ", "ﾀﾋね😊よ"),
        ("おい ﾀﾋね😊よ", "おい死", "おい ﾀﾋ"),
        ("し ね", "しね", "し ね"),
        ("バ・カ", "バカ", "バ・カ"),
        ("ころすーー", "ころす", "ころす"),
        ("ころすーーぞ", "ころすぞ", "ころすーーぞ"),
        ("死ねwww", "死ね", "死ね"),
        ("馬〇", "馬○", "馬〇"),
        ("カーーーだ", "カー", "カーーー"),
        ("ﾊﾞｶ", "バ", "ﾊﾞ"),
        ("しねええええ！", "しね", "しね"),
    ];

    /// Every row of `EVIDENCE`: the quote is the exact contiguous original span.
    #[test]
    fn evidence_quotes_the_original_span() {
        for &(input, needle, expected) in EVIDENCE {
            assert_eq!(
                evidence(input, needle),
                expected,
                "evidence for {needle:?} in {input:?}; help: check the span recorded by each step"
            );
        }
    }

    /// Empty, end, inside-a-char and out-of-range offsets map sensibly and never panic.
    #[test]
    fn original_chars_edges() {
        let n = normalize("おい ﾀﾋね😊よ");
        assert_eq!(n.original_len_chars(), 8, "help: counts chars, not bytes");
        let len = n.as_str().len();
        assert_eq!(n.original_chars(0..len), 0..8, "help: the whole text covers first..last kept");
        assert_eq!(n.original_chars(0..0), 0..0, "help: empty range at the start");
        assert_eq!(n.original_chars(len..len), 8..8, "help: empty range at the end");
        let shi = n.as_str().find('死').unwrap_or(0);
        assert_eq!(n.original_chars(shi..shi), 3..3, "help: empty range maps to its char's start");
        assert_eq!(n.original_chars(shi + 1..shi + 2), 3..5, "help: inside a char counts the char");
        assert_eq!(n.original_chars(len..len + 10), 8..8, "help: out of range is clamped");
        let trailing = normalize("死ね😊");
        let all = trailing.as_str().len();
        assert_eq!(trailing.original_chars(0..all), 0..2, "help: trailing drops are not covered");
        let dropped = normalize("😊www");
        assert_eq!(dropped.as_str(), "", "help: everything is dropped");
        assert_eq!(dropped.original_chars(0..0), 0..0, "help: nothing kept maps to 0..0");
    }

    /// Katakana folds for the reading layer; unchanged text is borrowed, not copied.
    #[test]
    fn fold_kana_rows() {
        assert_eq!(fold_kana("コロス"), "ころす", "help: katakana folds to hiragana");
        assert_eq!(fold_kana("ケーブル"), "けーぶる", "help: ー is left alone");
        assert_eq!(fold_kana("ヴァヽヾヶ"), "ゔぁゝゞゖ", "help: the whole ァ-ヶ block and ヽヾ");
        assert_eq!(fold_kana("ヷ死ねabc"), "ヷ死ねabc", "help: ヷ has no hiragana form");
        assert!(
            matches!(fold_kana("ころす"), Cow::Borrowed("ころす")),
            "help: nothing to fold must borrow"
        );
        assert!(matches!(fold_kana(""), Cow::Borrowed("")), "help: empty borrows");
    }

    /// A new `DISGUISES` row cannot match empty text or re-trigger itself.
    #[test]
    fn disguise_rows_are_well_formed() {
        for d in DISGUISES {
            assert!(!d.from.is_empty(), "help: an empty `from` would match everywhere");
            assert!(!d.from.contains(d.to), "help: `to` inside `from` could re-trigger the row");
        }
    }

    /// Chars that exercise every step and their interactions.
    const ALPHABET: &[char] = &[
        'し', 'ね', 'あ', 'い', 'う', 'え', 'お', 'か', 'こ', 'ろ', 'す', 'ん', 'っ', 'ぁ', 'ぇ',
        'ゃ', 'ば', 'タ', 'ヒ', 'ネ', 'カ', 'バ', 'ア', 'ケ', 'ブ', 'ァ', 'ェ', 'ヴ', 'ﾀ', 'ﾋ',
        'ｶ', 'ﾊ', 'ﾞ', 'ﾟ', 'ｰ', 'ｯ', 'ｗ', 'Ｗ', '死', '氏', '馬', '鹿', '二', '十', '円', 'a', 'w',
        'W', 'A', 'i', '4', '3', '1', '.', '-', '_', '*', '~', '!', '/', '😊', '👍', '🏻', '✕',
        '☆', '⭕', ' ', '\u{3000}', '\t', '\n', 'ー', '〜', '～', '○', '〇', '◯', '●', '◎', '□',
        '■', '×', '＊', '＿', '・', '･', '·', '、', '。', '\u{3099}', '\u{309A}', '\u{0301}',
        '\u{0308}', '゛', '゜', '\u{200B}', '\u{200D}', '\u{FE0F}', '\u{20E3}', '㍿', 'ㄱ', 'ㅏ',
        'ᄀ', 'ᅡ', 'ᆨ', '가', '\u{0007}', '４',
    ];

    fn japanese_mix() -> impl Strategy<Value = String> {
        prop::collection::vec(prop::sample::select(ALPHABET), 0..40)
            .prop_map(|v| v.into_iter().collect())
    }

    fn any_chars() -> impl Strategy<Value = String> {
        prop::collection::vec(any::<char>(), 0..30).prop_map(|v| v.into_iter().collect())
    }

    fn check_invariants(x: &str) -> Result<(), TestCaseError> {
        let n = normalize(x);
        let again = normalize(n.as_str());
        prop_assert_eq!(
            again.as_str(),
            n.as_str(),
            "help: not idempotent for {:?}; find the step whose output re-triggers a step",
            x
        );
        let total = n.original_len_chars();
        prop_assert_eq!(total, x.chars().count(), "help: original_len_chars counts chars");
        let text = n.as_str();
        let bounds: Vec<usize> =
            text.char_indices().map(|(b, _)| b).chain(std::iter::once(text.len())).collect();
        for (i, &a) in bounds.iter().enumerate() {
            for &b in &bounds[i..] {
                let r = n.original_chars(a..b);
                prop_assert!(
                    r.start <= r.end && r.end <= total,
                    "help: {:?} mapped to {:?} outside 0..={} for {:?}",
                    a..b,
                    r,
                    total,
                    x
                );
            }
        }
        if let (Some(first), Some(last)) = (n.spans.first(), n.spans.last()) {
            prop_assert_eq!(
                n.original_chars(0..text.len()),
                first.start..last.end,
                "help: the whole text covers first..last kept char"
            );
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Idempotent, never panics, offsets in bounds: on text built to hit every step.
        #[test]
        fn invariants_on_japanese_mix(x in japanese_mix()) {
            check_invariants(&x)?;
        }

        /// The same on arbitrary Unicode (marks, Hangul, compatibility chars, unassigned).
        #[test]
        fn invariants_on_any_chars(x in any_chars()) {
            check_invariants(&x)?;
        }

        /// A step whose gate says no must indeed change nothing, or gating would lose work;
        /// and a gate can only say yes when a char of the text triggers the step (the table
        /// `normalize` consults first).
        #[test]
        fn gates_are_exact(x in japanese_mix()) {
            for (i, s) in NORMALIZERS.iter().enumerate() {
                let p = pieces_of(&x);
                let triggered = Triggers::get().of_text(&p) & (1 << i) != 0;
                prop_assert!(
                    triggered || !s.should_apply(&p),
                    "help: {} applies to {:?} but no char triggers it", s.name, x
                );
                if !s.should_apply(&p) {
                    let mut q = p.clone();
                    (s.apply)(&mut q);
                    // Only the text must be unchanged: NFKC may merge the spans of a
                    // cluster that is already normalised, which skipping it does not need.
                    let chars = |v: &[Piece]| v.iter().map(|x| x.ch).collect::<String>();
                    prop_assert_eq!(chars(&q), chars(&p), "help: gate of {} is too strict", s.name);
                }
            }
        }

        /// Folding is char for char and stable, so reading offsets stay aligned.
        #[test]
        fn fold_kana_keeps_length_and_is_idempotent(x in japanese_mix()) {
            let once = fold_kana(&x).into_owned();
            prop_assert_eq!(once.chars().count(), x.chars().count(), "help: folding is per char");
            prop_assert!(matches!(fold_kana(&once), Cow::Borrowed(_)), "help: folded text is stable");
        }
    }
}
