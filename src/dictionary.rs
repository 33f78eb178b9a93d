//! Lexicon files: parsing and validating `dictionaries/**/*.tsv` into entries and context rules.
//!
//! This is the first thing the service does at start-up and the only place that knows the file
//! format (documented for authors in `dictionaries/README.md`). Patterns stay text here; the
//! matcher (`pipeline::matcher`) runs every pattern through the *same* normaliser and tokeniser
//! as live transcripts, so an entry and the words it should catch always agree.
//!
//! Every problem is reported with `file:line`, and all problems of a load are reported at once,
//! so an author fixes a file in one pass.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LexiconOverlay;
use crate::policy::{Category, Severity, UnknownCode};

/// Where a line came from, for error messages and `lexicon check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The file, as found under the lexicon directory; shared by all lines of the file.
    pub path: Arc<Path>,
    /// 1-based line number.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.path.display(), self.line)
    }
}

/// How two consecutive pieces of a pattern must stand to each other, in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// `~N`: the next piece follows, with at most N tokens in between.
    FollowedWithin(u8),
    /// `&N`: the next piece is on either side, with at most N tokens in between.
    NearWithin(u8),
}

/// A pattern: pieces, each a set of alternative phrases, joined left to right.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The pieces; each holds one or more alternative phrases (natural Japanese text).
    pub pieces: Vec<Vec<String>>,
    /// `joins[i]` joins `pieces[i]` and `pieces[i + 1]`.
    pub joins: Vec<Join>,
}

/// The largest gap a `~N` or `&N` may allow; wider windows stop meaning "one phrase".
pub const MAX_GAP: u8 = 12;

/// The most pieces one pattern may join (the matcher numbers them in a byte).
pub const MAX_PIECES: usize = 256;

impl Pattern {
    /// Parses the pattern language: `A|B ~N C &N D`.
    ///
    /// # Errors
    /// An empty alternative, a malformed or too-wide join, or a dangling join.
    pub fn parse(text: &str) -> Result<Pattern, String> {
        let mut pieces = Vec::new();
        let mut joins = Vec::new();
        let mut expect_piece = true;
        for part in text.split(' ').filter(|p| !p.is_empty()) {
            let join = part
                .strip_prefix('~')
                .map(|n| (n, Join::FollowedWithin as fn(u8) -> Join))
                .or_else(|| {
                    part.strip_prefix('&').map(|n| (n, Join::NearWithin as fn(u8) -> Join))
                });
            match join {
                Some((n, make)) => {
                    if expect_piece {
                        return Err(format!("join {part:?} has no piece before it"));
                    }
                    let gap: u8 = n
                        .parse()
                        .ok()
                        .filter(|g| *g <= MAX_GAP)
                        .ok_or_else(|| format!("join {part:?} needs a gap of 0..={MAX_GAP}"))?;
                    joins.push(make(gap));
                    expect_piece = true;
                }
                None => {
                    if !expect_piece {
                        // Two phrases separated by a space are one phrase: Japanese has no
                        // spaces, and the normaliser would remove it anyway.
                        let last: &mut Vec<String> = pieces
                            .last_mut()
                            .expect("a piece was pushed before expect_piece=false");
                        return Err(format!(
                            "{part:?} follows {:?} without a join; write ~N or &N between pieces",
                            last.last().map(String::as_str).unwrap_or("")
                        ));
                    }
                    let mut alternatives: Vec<String> =
                        part.split('|').map(str::to_owned).collect();
                    // Kept for the matcher's lifetime: `collect` and `push` leave room for
                    // four, and most patterns have one piece of one phrase.
                    alternatives.shrink_to_fit();
                    if alternatives.iter().any(String::is_empty) {
                        return Err(format!("empty alternative in {part:?}"));
                    }
                    pieces.push(alternatives);
                    expect_piece = false;
                }
            }
        }
        if pieces.is_empty() {
            return Err("empty pattern".to_owned());
        }
        if expect_piece {
            return Err("pattern ends with a join".to_owned());
        }
        if pieces.len() > MAX_PIECES {
            return Err(format!("{} pieces; a pattern joins at most {MAX_PIECES}", pieces.len()));
        }
        pieces.shrink_to_fit();
        joins.shrink_to_fit();
        Ok(Pattern { pieces, joins })
    }
}

/// Per-entry switches from the `flags` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// A nearby second-person marker (お前, てめえ) raises the severity one level.
    pub target: bool,
    /// Negation markers do not defuse this entry.
    pub no_negate: bool,
    /// The entry raises no alert of its own; it only counts its family toward PERSISTENCE
    /// (a demand that is legitimate once, 今日来てください, but not the fifth time).
    pub track: bool,
}

/// One lexicon entry: a kind of harassment and the phrases that express it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Stable id, unique across all files (`attack.kill`).
    pub id: String,
    /// The policy category it raises.
    pub category: Category,
    /// Its severity before context rules.
    pub severity: Severity,
    /// Entries of one family count as the same demand or abuse for persistence. Entries of
    /// one family share the string.
    pub family: Arc<str>,
    /// What to match.
    pub pattern: Pattern,
    /// Context switches.
    pub flags: Flags,
    /// Why this is harassment under the policy; quoted in alerts. Entries and rules with the
    /// same rationale share the string.
    pub rationale: Arc<str>,
    /// Where it was defined.
    pub origin: Origin,
}

/// What a context rule does to the entry hits around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// Defuses an entry hit that it follows within the window (殺す + つもりはない).
    Negation,
    /// Defuses an entry hit that it precedes within the window.
    Hypothetical,
    /// A second-person marker: raises `target` entries within the window.
    Target,
    /// Never alert on a hit that uses words of this phrase (土下座外交, 死亡保険).
    Allow,
    /// A legitimate complaint form (返金してください): raises nothing and silences hits inside it.
    Legit,
}

impl RuleKind {
    fn parse(s: &str) -> Option<RuleKind> {
        Some(match s {
            "negation" => RuleKind::Negation,
            "hypothetical" => RuleKind::Hypothetical,
            "target" => RuleKind::Target,
            "allow" => RuleKind::Allow,
            "legit" => RuleKind::Legit,
            _ => return None,
        })
    }

    /// Whether the rule's window column must be a number.
    fn takes_window(self) -> bool {
        matches!(self, RuleKind::Negation | RuleKind::Hypothetical | RuleKind::Target)
    }
}

/// One line of `context.tsv`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRule {
    /// Stable id.
    pub id: String,
    /// What it does.
    pub kind: RuleKind,
    /// Reach in tokens (0 for allow and legit).
    pub window: u8,
    /// What to match; same language as entries.
    pub pattern: Pattern,
    /// Why it exists.
    pub rationale: Arc<str>,
    /// Where it was defined.
    pub origin: Origin,
}

/// A whole loaded lexicon: entries plus context rules, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lexicon {
    /// Harassment entries, in file then line order.
    pub entries: Vec<Entry>,
    /// Context rules, in file then line order.
    pub rules: Vec<ContextRule>,
}

/// One problem in one line of a lexicon file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineError {
    /// Where.
    pub origin: Origin,
    /// What is wrong, naming the bad value.
    pub message: String,
}

impl fmt::Display for LineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.origin, self.message)
    }
}

/// Why a lexicon could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DictionaryError {
    /// A file or directory could not be read.
    #[error("cannot read {path}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The directory holds no `.tsv` file.
    #[error("no lexicon files (*.tsv) under {0}")]
    Empty(PathBuf),
    /// Lines were malformed; every one is listed.
    #[error("{} error(s) in lexicon files:\n{}", .0.len(), join_lines(.0))]
    Invalid(Vec<LineError>),
    /// A pattern reduces to nothing the matcher can use (all of it normalised away).
    #[error("{origin}: pattern {pattern:?} has no words after normalisation")]
    EmptyPattern {
        /// Where.
        origin: Origin,
        /// The offending alternative.
        pattern: String,
    },
    /// The lexicon uses more distinct base forms than the matcher's encoding holds.
    #[error("the lexicon uses more than {limit} distinct words")]
    VocabularyFull {
        /// The limit.
        limit: usize,
    },
    /// The lexicon has more entries and rules than the matcher numbers.
    #[error("the lexicon has {count} entries and rules; the matcher holds at most {limit}")]
    TooManyEntries {
        /// Entries and rules together.
        count: usize,
        /// The limit.
        limit: usize,
    },
    /// A tenant overlay disables an id that no entry or rule has.
    #[error("lexicon_disable names {0:?}, which is no entry or context rule id")]
    UnknownDisabled(String),
    /// The automaton could not be built (too many patterns for the configured limits).
    #[error("cannot build the matcher")]
    Build(#[source] aho_corasick::BuildError),
    /// The tokeniser failed on a pattern.
    #[error("{origin}: cannot tokenise a pattern")]
    Tokenise {
        /// Where.
        origin: Origin,
        /// The cause.
        #[source]
        source: crate::pipeline::segment::SegmentError,
    },
}

fn join_lines(errors: &[LineError]) -> String {
    errors.iter().map(|e| format!("  {e}")).collect::<Vec<_>>().join("\n")
}

/// The name of the context-rule file in a lexicon directory.
pub const CONTEXT_FILE: &str = "context.tsv";

impl Lexicon {
    /// Loads every `*.tsv` under `dir` (recursively, in path order) and validates it.
    ///
    /// # Errors
    /// I/O errors, an empty directory, or every malformed line with its `file:line`.
    pub fn load_dir(dir: &Path) -> Result<Lexicon, DictionaryError> {
        let mut files = Vec::new();
        collect_tsv(dir, &mut files)?;
        if files.is_empty() {
            return Err(DictionaryError::Empty(dir.to_owned()));
        }
        files.sort();
        let mut sources = Vec::with_capacity(files.len());
        for path in files {
            let text = std::fs::read_to_string(&path)
                .map_err(|source| DictionaryError::Io { path: path.clone(), source })?;
            sources.push((path, text));
        }
        Lexicon::parse_files(sources.iter().map(|(p, t)| (p.as_path(), t.as_str())))
    }

    /// Parses already-read files; `context.tsv` files hold rules, all others entries.
    ///
    /// # Errors
    /// Every malformed line, duplicate id or unknown code, with its `file:line`.
    pub fn parse_files<'a>(
        files: impl IntoIterator<Item = (&'a Path, &'a str)>,
    ) -> Result<Lexicon, DictionaryError> {
        let mut lexicon = Lexicon::default();
        let mut errors = Vec::new();
        let mut seen: HashMap<String, Origin> = HashMap::new();
        let mut strings = Interner::default();
        for (path, text) in files {
            let is_context = path.file_name().is_some_and(|n| n == CONTEXT_FILE);
            let path: Arc<Path> = Arc::from(path);
            for (index, raw) in text.lines().enumerate() {
                let line = raw.trim_end_matches('\r');
                if line.trim().is_empty() || line.starts_with('#') {
                    continue;
                }
                let origin = Origin { path: Arc::clone(&path), line: index + 1 };
                let fields: Vec<&str> = line.split('\t').map(str::trim).collect();
                let parsed = if is_context {
                    parse_rule(&fields, origin.clone(), &mut strings).map(|r| {
                        let id = r.id.clone();
                        lexicon.rules.push(r);
                        id
                    })
                } else {
                    parse_entry(&fields, origin.clone(), &mut strings).map(|e| {
                        let id = e.id.clone();
                        lexicon.entries.push(e);
                        id
                    })
                };
                match parsed {
                    Ok(id) => {
                        if let Some(first) = seen.get(&id) {
                            errors.push(LineError {
                                origin,
                                message: format!("duplicate id {id:?} (first defined at {first})"),
                            });
                        } else {
                            seen.insert(id, origin);
                        }
                    }
                    Err(message) => errors.push(LineError { origin, message }),
                }
            }
        }
        if errors.is_empty() { Ok(lexicon) } else { Err(DictionaryError::Invalid(errors)) }
    }

    /// This lexicon with a tenant's overlay applied: the overlay directory's entries and rules
    /// added, then the listed ids switched off. `self` is the shared lexicon and stays as it is.
    ///
    /// # Errors
    /// The overlay's own load errors (file:line), an overlay id that the shared lexicon
    /// already defines, or a disabled id that names no entry or rule.
    pub fn with_overlay(&self, overlay: &LexiconOverlay) -> Result<Lexicon, DictionaryError> {
        let mut merged = self.clone();
        if let Some(dir) = &overlay.dir {
            let extra = Lexicon::load_dir(dir)?;
            let defined: HashMap<&str, &Origin> = self
                .entries
                .iter()
                .map(|e| (e.id.as_str(), &e.origin))
                .chain(self.rules.iter().map(|r| (r.id.as_str(), &r.origin)))
                .collect();
            let clashes: Vec<LineError> = extra
                .entries
                .iter()
                .map(|e| (&e.id, &e.origin))
                .chain(extra.rules.iter().map(|r| (&r.id, &r.origin)))
                .filter_map(|(id, origin)| {
                    defined.get(id.as_str()).map(|first| LineError {
                        origin: origin.clone(),
                        message: format!(
                            "overlay id {id:?} is already defined at {first}; disable it and add \
                             a new id instead"
                        ),
                    })
                })
                .collect();
            if !clashes.is_empty() {
                return Err(DictionaryError::Invalid(clashes));
            }
            merged.entries.extend(extra.entries);
            merged.rules.extend(extra.rules);
        }
        for id in &overlay.disable {
            if !merged.entries.iter().any(|e| &e.id == id)
                && !merged.rules.iter().any(|r| &r.id == id)
            {
                return Err(DictionaryError::UnknownDisabled(id.clone()));
            }
        }
        merged.entries.retain(|e| !overlay.disable.contains(&e.id));
        merged.rules.retain(|r| !overlay.disable.contains(&r.id));
        Ok(merged)
    }
}

fn collect_tsv(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DictionaryError> {
    let io = |source| DictionaryError::Io { path: dir.to_owned(), source };
    for item in std::fs::read_dir(dir).map_err(io)? {
        let path = item.map_err(io)?.path();
        if path.is_dir() {
            collect_tsv(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "tsv") {
            out.push(path);
        }
    }
    Ok(())
}

const ENTRY_COLUMNS: &str = "id, category, severity, family, pattern, flags, rationale";
const RULE_COLUMNS: &str = "id, kind, window, pattern, rationale";

/// One shared copy of each family and rationale string of a lexicon: a large lexicon repeats
/// them across thousands of entries.
#[derive(Default)]
struct Interner(HashSet<Arc<str>>);

impl Interner {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(s) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(s);
        self.0.insert(Arc::clone(&shared));
        shared
    }
}

fn parse_entry(fields: &[&str], origin: Origin, strings: &mut Interner) -> Result<Entry, String> {
    let [id, category, severity, family, pattern, flags, rationale] = fields else {
        return Err(format!(
            "expected 7 tab-separated columns ({ENTRY_COLUMNS}), found {}",
            fields.len()
        ));
    };
    Ok(Entry {
        id: parse_id(id)?,
        category: category.parse().map_err(|e: UnknownCode| e.to_string())?,
        severity: severity.parse().map_err(|e: UnknownCode| e.to_string())?,
        family: strings.get(non_empty("family", family)?),
        pattern: Pattern::parse(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?,
        flags: parse_flags(flags)?,
        rationale: strings.get(non_empty("rationale", rationale)?),
        origin,
    })
}

fn parse_rule(
    fields: &[&str],
    origin: Origin,
    strings: &mut Interner,
) -> Result<ContextRule, String> {
    let [id, kind, window, pattern, rationale] = fields else {
        return Err(format!(
            "expected 5 tab-separated columns ({RULE_COLUMNS}), found {}",
            fields.len()
        ));
    };
    let kind = RuleKind::parse(kind).ok_or_else(|| {
        format!(
            "unknown rule kind {kind:?} (expected negation, hypothetical, target, allow, legit)"
        )
    })?;
    let window =
        if kind.takes_window() {
            window.parse::<u8>().ok().filter(|w| *w <= MAX_GAP).ok_or_else(|| {
                format!("window {window:?} must be a number of tokens 0..={MAX_GAP}")
            })?
        } else {
            0
        };
    Ok(ContextRule {
        id: parse_id(id)?,
        kind,
        window,
        pattern: Pattern::parse(pattern).map_err(|e| format!("pattern {pattern:?}: {e}"))?,
        rationale: strings.get(non_empty("rationale", rationale)?),
        origin,
    })
}

fn parse_id(id: &str) -> Result<String, String> {
    let ok = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
    if ok {
        Ok(id.to_owned())
    } else {
        Err(format!("id {id:?} must be lower-case ASCII [a-z0-9._-]"))
    }
}

fn parse_flags(flags: &str) -> Result<Flags, String> {
    let mut out = Flags::default();
    if flags == "-" {
        return Ok(out);
    }
    for flag in flags.split(',').map(str::trim) {
        match flag {
            "target" => out.target = true,
            "no-negate" => out.no_negate = true,
            "track" => out.track = true,
            other => {
                return Err(format!(
                    "unknown flag {other:?} (expected target, no-negate, track or -)"
                ));
            }
        }
    }
    Ok(out)
}

fn non_empty<'a>(name: &str, value: &'a str) -> Result<&'a str, String> {
    if value.is_empty() { Err(format!("{name} is empty")) } else { Ok(value) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(name: &str, text: &str) -> Result<Lexicon, DictionaryError> {
        Lexicon::parse_files([(Path::new(name), text)])
    }

    /// A well-formed entry parses into its columns.
    #[test]
    fn entry_parses() {
        let lex = parse(
            "attack.tsv",
            "# comment\n\nattack.kill\tATTACK\tCRITICAL\tkill-threat\t殺す|ぶっ殺す\ttarget\t殺害予告\n",
        )
        .expect("valid");
        let e = &lex.entries[0];
        assert_eq!(e.id, "attack.kill");
        assert_eq!(e.severity, Severity::Critical);
        assert_eq!(e.pattern.pieces, vec![vec!["殺す".to_owned(), "ぶっ殺す".to_owned()]]);
        assert!(e.flags.target);
        assert_eq!(e.origin.line, 3);
    }

    /// Entries of one load share their path and equal family and rationale strings.
    #[test]
    fn repeated_strings_are_shared() {
        let lex = parse(
            "attack.tsv",
            "a.one\tATTACK\tLOW\tfool\t馬鹿\t-\tinsult\n\
             a.two\tATTACK\tLOW\tfool\t阿呆\t-\tinsult\n\
             a.three\tATTACK\tLOW\tscum\tクズ\t-\tworse\n",
        )
        .expect("valid");
        let [one, two, three] = &lex.entries[..] else { panic!("help: three entries") };
        assert!(
            Arc::ptr_eq(&one.family, &two.family) && Arc::ptr_eq(&one.rationale, &two.rationale)
        );
        assert!(Arc::ptr_eq(&one.origin.path, &three.origin.path));
        assert_eq!((&*three.family, &*three.rationale), ("scum", "worse"));
    }

    /// Joins parse with their gap; errors name what is wrong.
    #[test]
    fn pattern_language() {
        let p = Pattern::parse("土下座 ~4 謝れ|詫びろ &8 ネット").expect("valid");
        assert_eq!(p.pieces.len(), 3);
        assert_eq!(p.joins, vec![Join::FollowedWithin(4), Join::NearWithin(8)]);
        for (bad, why) in [
            ("", "empty pattern"),
            ("~3 殺す", "no piece before"),
            ("殺す ~3", "ends with a join"),
            ("殺す ~99 死ね", "gap of 0..=12"),
            ("殺す|", "empty alternative"),
            ("殺す 死ね", "without a join"),
        ] {
            let err = Pattern::parse(bad).expect_err(bad);
            assert!(err.contains(why), "help: {bad:?} gave {err:?}, wanted {why:?}");
        }
        let joined = |pieces: usize| vec!["殺す"; pieces].join(" ~1 ");
        assert_eq!(Pattern::parse(&joined(MAX_PIECES)).map(|p| p.pieces.len()), Ok(MAX_PIECES));
        let err = Pattern::parse(&joined(MAX_PIECES + 1)).expect_err("too many pieces");
        assert!(err.contains("at most 256"), "help: got {err:?}");
    }

    /// Every bad line is reported at once, each with file:line; duplicates name the first.
    #[test]
    fn errors_carry_file_and_line() {
        let text = "a.x\tATTACK\tHUGE\tf\t殺す\t-\tr\n\
                    b.x\tNOPE\tLOW\tf\t殺す\t-\tr\n\
                    c.x\tATTACK\tLOW\tf\t殺す\n\
                    d.x\tATTACK\tLOW\tf\t殺す\t-\tr\n\
                    d.x\tATTACK\tLOW\tf\t死ね\t-\tr\n\
                    e.x\tATTACK\tLOW\tf\t死ね\tloud\tr\n";
        let Err(DictionaryError::Invalid(errors)) = parse("dir/attack.tsv", text) else {
            panic!("expected invalid");
        };
        let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 5, "help: {lines:#?}");
        assert!(lines[0].starts_with("dir/attack.tsv:1: unknown severity \"HUGE\""));
        assert!(lines[1].starts_with("dir/attack.tsv:2: unknown category \"NOPE\""));
        assert!(lines[2].contains(":3: expected 7 tab-separated columns"));
        assert!(lines[3].contains(":5: duplicate id \"d.x\" (first defined at dir/attack.tsv:4)"));
        assert!(lines[4].contains(":6: unknown flag \"loud\""));
    }

    /// context.tsv lines are rules; window is required only where it means something.
    #[test]
    fn context_rules() {
        let lex = parse(
            "context.tsv",
            "neg.a\tnegation\t3\tつもりはない\tr\nallow.a\tallow\t-\t土下座外交\tr\n",
        )
        .expect("valid");
        assert_eq!(lex.rules[0].kind, RuleKind::Negation);
        assert_eq!(lex.rules[0].window, 3);
        assert_eq!(lex.rules[1].kind, RuleKind::Allow);
        let err =
            parse("context.tsv", "neg.b\tnegation\tfar\tないよ\tr\n").expect_err("bad window");
        assert!(err.to_string().contains("window \"far\""), "help: {err}");
    }

    /// The shipped lexicon loads without a single error.
    #[test]
    fn shipped_lexicon_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dictionaries");
        let lex = Lexicon::load_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        for category in Category::ALL {
            assert!(
                lex.entries.iter().any(|e| e.category == category),
                "help: no entry for {category}"
            );
        }
    }
}
