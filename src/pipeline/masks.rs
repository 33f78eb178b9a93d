//! Characters that stand for others: fuseji (伏せ字) masks that stand for one character (馬○,
//! ク○野郎, ころ○てやる), and kanji that look like katakana typed inside a katakana word (バ力).
//!
//! The normaliser turns every mask next to Japanese text into ○. A lexicon could list masked
//! spellings one by one, but customers put the mask anywhere. Instead, for each lone ○ we ask
//! which characters the lexicon's own phrases put between its neighbours (馬 is followed by
//! 鹿 in 馬鹿; ソ sits before 野 in クソ野郎), try each in place of the mask, and keep the one
//! that makes a lexicon entry hit *through* the mask, preferring the most severe. The filled
//! text is what the matcher then screens; the evidence still quotes the original (馬〇) and
//! shows the filled form as the normalised text, so a supervisor sees both.
//!
//! Only masks standing alone are filled: a run such as ○○様 is a redacted name, not a word.
//! Every candidate is a three-byte UTF-8 char like ○ itself, so byte offsets into the
//! normalised text (and the offset map back to the original) do not move.

use std::collections::{BTreeSet, HashMap};

use crate::dictionary::Lexicon;
use crate::pipeline::normalize::{MASK, fold_kana, normalize};

/// Chars either side of a mask that a trial screens: enough for a phrase and its ending.
const TRIAL_CONTEXT_CHARS: usize = 12;
/// Masks filled per text at most; a text of masks is noise, and each mask costs trials.
const MAX_MASKS: usize = 4;

/// Which characters the lexicon writes after, and before, each character.
#[derive(Debug, Default)]
pub struct MaskFill {
    after: HashMap<char, BTreeSet<char>>,
    before: HashMap<char, BTreeSet<char>>,
}

impl MaskFill {
    /// Collects the character pairs of every entry phrase, as normalised and in hiragana.
    pub fn from_lexicon(lexicon: &Lexicon) -> Self {
        let mut fill = MaskFill::default();
        for entry in &lexicon.entries {
            for alternative in entry.pattern.pieces.iter().flatten() {
                let normalized = normalize(alternative);
                let hiragana = fold_kana(normalized.as_str());
                for phrase in [normalized.as_str(), &*hiragana] {
                    let chars: Vec<char> = phrase.chars().collect();
                    for pair in chars.windows(2) {
                        if fills_a_mask(pair[0]) && fills_a_mask(pair[1]) {
                            fill.after.entry(pair[0]).or_default().insert(pair[1]);
                            fill.before.entry(pair[1]).or_default().insert(pair[0]);
                        }
                    }
                }
            }
        }
        fill
    }

    /// Byte offsets of the masks worth filling: lone ○ with Japanese on at least one side.
    pub fn masks(text: &str) -> Vec<usize> {
        let chars: Vec<(usize, char)> = text.char_indices().collect();
        (0..chars.len())
            .filter(|&i| {
                let is_mask =
                    |j: Option<usize>| j.and_then(|j| chars.get(j)).is_some_and(|c| c.1 == MASK);
                chars[i].1 == MASK && !is_mask(i.checked_sub(1)) && !is_mask(Some(i + 1))
            })
            .map(|i| chars[i].0)
            .take(MAX_MASKS)
            .collect()
    }

    /// Characters that could stand where the mask at `byte` is, in a fixed order.
    pub fn candidates(&self, text: &str, byte: usize) -> BTreeSet<char> {
        let left = text[..byte].chars().next_back();
        let right = text[byte + MASK.len_utf8()..].chars().next();
        let mut out = BTreeSet::new();
        for (neighbour, table) in [(left, &self.after), (right, &self.before)] {
            if let Some(set) = neighbour.and_then(|c| table.get(&c)) {
                out.extend(set.iter().copied());
            }
        }
        out
    }

    /// The window of `text` a trial for the mask at `byte` screens: byte range, on char
    /// boundaries, with the mask inside.
    pub fn trial_window(text: &str, byte: usize) -> std::ops::Range<usize> {
        let start =
            text[..byte].char_indices().rev().nth(TRIAL_CONTEXT_CHARS - 1).map_or(0, |(i, _)| i);
        let after = byte + MASK.len_utf8();
        let end = text[after..]
            .char_indices()
            .nth(TRIAL_CONTEXT_CHARS)
            .map_or(text.len(), |(i, _)| after + i);
        start..end
    }
}

impl MaskFill {
    /// The script of a char, to prefer fills written like their neighbour: 0 hiragana,
    /// 1 katakana, 2 anything else.
    pub fn script(c: char) -> u8 {
        match c {
            '\u{3041}'..='\u{309F}' => 0,
            '\u{30A0}'..='\u{30FF}' => 1,
            _ => 2,
        }
    }
}

/// Kanji that look like katakana, typed inside a katakana word to dodge filters (バ力, ク口ス,
/// 夕ヒね), with the katakana they stand for.
const KATAKANA_LOOKALIKES: &[(char, char)] = &[
    ('力', 'カ'),
    ('口', 'ロ'),
    ('工', 'エ'),
    ('夕', 'タ'),
    ('卜', 'ト'),
    ('二', 'ニ'),
    ('八', 'ハ'),
    ('才', 'オ'),
];

/// Where a lookalike kanji stands inside a katakana word: (byte offset, the katakana it stands
/// for). It must follow katakana and not precede kanji, so 工事, 二人 and 口コミ keep their
/// kanji (テレビ工事 has 事 after 工). This runs on normalised text, after the
/// normaliser, which it leaves idempotent; the char is replaced one for one (both three bytes),
/// so offsets do not move.
pub fn katakana_lookalikes(text: &str) -> Vec<(usize, char)> {
    let katakana = |c: char| matches!(c, '\u{30A1}'..='\u{30FA}' | 'ー');
    let kanji = |c: char| ('\u{4E00}'..='\u{9FFF}').contains(&c);
    let mut found = Vec::new();
    let mut chars = text.char_indices().peekable();
    let mut before = None;
    while let Some((at, c)) = chars.next() {
        // After katakana only: a lookalike that starts a word is usually the real kanji
        // (口コミ, 二キロ).
        if before.is_some_and(katakana)
            && let Some(&(_, to)) = KATAKANA_LOOKALIKES.iter().find(|(k, _)| *k == c)
            && !chars.peek().is_some_and(|&(_, after)| kanji(after))
        {
            found.push((at, to));
        }
        before = Some(c);
    }
    found
}

/// Kana and kanji: the characters a mask can stand for, all three bytes in UTF-8 like ○.
fn fills_a_mask(c: char) -> bool {
    matches!(c, '\u{3041}'..='\u{3096}' | '\u{30A1}'..='\u{30FA}' | 'ー' | '\u{4E00}'..='\u{9FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lookalikes inside katakana words are found; kanji words are left alone.
    #[test]
    fn lookalikes_inside_katakana_words() {
        let fold = |text: &str| {
            let mut out: Vec<char> = text.chars().collect();
            for (at, to) in katakana_lookalikes(text) {
                out[text[..at].chars().count()] = to;
            }
            out.into_iter().collect::<String>()
        };
        for (text, expected) in [
            ("バ力じゃないの", "バカじゃないの"),
            ("ク口ス", "クロス"),
            ("口コミに書く", "口コミに書く"),
            ("テレビ工事", "テレビ工事"),
            ("協力します", "協力します"),
            ("二人で", "二人で"),
            ("二口", "二口"),
        ] {
            assert_eq!(fold(text), expected, "help: {text:?}");
        }
    }
}
