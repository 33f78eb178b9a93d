//! Personal data in evidence: phone numbers, e-mail addresses, card-like numbers, postal codes
//! and street numbers are masked before a quote leaves the pipeline, so an alert (and every
//! log, store or screen it reaches) carries the abusive words but not the customer's or the
//! agent's contact details.
//!
//! Masking replaces each character of the sensitive part with `＊` (or `*` for ASCII), one for
//! one, so evidence offsets into the original text stay valid. It is a scanner, not a parser:
//! it errs towards masking (any run of seven or more digits, any `x@y.z`).

use std::borrow::Cow;

/// Digits in a run (separators allowed between them) from which it is a phone, card or
/// account number rather than a price or a date.
const MIN_NUMBER_DIGITS: usize = 7;

/// Masks the personal data in `text`, keeping its length in chars and in bytes (only ASCII
/// chars and the three-byte full-width digits and ＠ are hidden, by `*` and `＊`); borrowed
/// when there is none.
pub fn mask(text: &str) -> Cow<'_, str> {
    // Every kind of personal data here has a digit or an at sign; most evidence has neither.
    if !text.chars().any(|c| digit(c) || c == '@' || c == '＠') {
        return Cow::Borrowed(text);
    }
    let chars: Vec<char> = text.chars().collect();
    let mut hide = vec![false; chars.len()];
    mark_numbers(&chars, &mut hide);
    mark_emails(&chars, &mut hide);
    mark_street_numbers(&chars, &mut hide);
    if !hide.contains(&true) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        chars
            .iter()
            .zip(&hide)
            .map(|(&c, &h)| match (h, c.is_ascii()) {
                (false, _) => c,
                (true, true) => '*',
                (true, false) => '＊',
            })
            .collect(),
    )
}

fn digit(c: char) -> bool {
    c.is_ascii_digit() || ('０'..='９').contains(&c)
}

/// Characters that join digit groups in numbers people write: hyphens of every width, spaces,
/// brackets, and ー typed for a hyphen.
fn joiner(c: char) -> bool {
    matches!(
        c,
        '-' | '‐'
            | '‑'
            | '–'
            | '—'
            | '−'
            | '－'
            | 'ー'
            | ' '
            | '　'
            | '('
            | ')'
            | '（'
            | '）'
            | '.'
    )
}

/// Runs of digits and joiners with at least `MIN_NUMBER_DIGITS` digits (phones, cards, postal
/// codes with their prefix, account numbers), or three or more hyphen-joined groups
/// (1-2-3 street numbers): their digits are hidden.
fn mark_numbers(chars: &[char], hide: &mut [bool]) {
    let mut i = 0;
    while i < chars.len() {
        if !digit(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        let (mut digits, mut groups, mut end) = (0, 1, i);
        while i < chars.len() && (digit(chars[i]) || joiner(chars[i])) {
            if digit(chars[i]) {
                digits += 1;
                end = i + 1;
            } else if i + 1 < chars.len() && digit(chars[i + 1]) && i > start && digit(chars[i - 1])
            {
                groups += 1;
            }
            i += 1;
        }
        let postal = start > 0 && chars[start - 1] == '〒';
        if digits >= MIN_NUMBER_DIGITS || groups >= 3 || postal {
            for k in start..end {
                hide[k] |= digit(chars[k]);
            }
        }
    }
}

fn email_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '%' | '+' | '-')
}

/// `local@domain.tld`: the whole address is hidden.
fn mark_emails(chars: &[char], hide: &mut [bool]) {
    for at in (0..chars.len()).filter(|&i| chars[i] == '@' || chars[i] == '＠') {
        let mut start = at;
        while start > 0 && email_char(chars[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < chars.len() && email_char(chars[end]) {
            end += 1;
        }
        let domain = &chars[at + 1..end];
        if start < at
            && domain.contains(&'.')
            && domain.first().is_some_and(char::is_ascii_alphanumeric)
        {
            hide[start..end].iter_mut().for_each(|h| *h = true);
        }
    }
}

/// Street numbers written with 丁目, 番地, 番 and 号 (3丁目5番2号): their digits are hidden.
fn mark_street_numbers(chars: &[char], hide: &mut [bool]) {
    const UNITS: [&str; 4] = ["丁目", "番地", "番", "号"];
    let mut i = 0;
    while i < chars.len() {
        if !digit(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && digit(chars[i]) {
            i += 1;
        }
        let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
        if UNITS.iter().any(|u| rest.starts_with(u)) {
            hide[start..i].iter_mut().for_each(|h| *h = true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Contact details are masked char for char; everything else is kept.
    #[test]
    fn masks_contact_details() {
        for (text, expected) in [
            ("090-1234-5678に電話しろ", "***-****-****に電話しろ"),
            ("０９０ー１２３４ー５６７８", "＊＊＊ー＊＊＊＊ー＊＊＊＊"),
            ("mail は taro.yamada@example.co.jp です", "mail は ************************* です"),
            ("カード 4111 1111 1111 1111 で払った", "カード **** **** **** **** で払った"),
            ("〒150-0001 まで来い", "〒***-**** まで来い"),
            ("1-2-3の家に行くぞ", "*-*-*の家に行くぞ"),
            ("3丁目5番2号に住んでる", "*丁目*番*号に住んでる"),
        ] {
            let masked = mask(text);
            assert_eq!(masked, expected, "help: {text:?}");
            assert_eq!(masked.chars().count(), text.chars().count(), "help: offsets must hold");
            assert_eq!(masked.len(), text.len(), "help: byte offsets must hold too");
        }
    }

    /// Prices, dates, counts and plain words are not personal data.
    #[test]
    fn leaves_ordinary_numbers() {
        for text in
            ["三十万払え", "50万振り込め", "2024年4月1日", "3回目だぞ", "10分待った", "土下座しろ"]
        {
            assert!(matches!(mask(text), Cow::Borrowed(_)), "help: {text:?}");
        }
    }
}
