//! Hot reload of the lexicons and the policy file (on SIGHUP and `AdminService.ReloadLexicons`).
//!
//! ```text
//! reload ──lock (one at a time)──▶ spawn_blocking: read policy file, lexicon dir, overlays,
//!                                  build every automaton          ──error──▶ old rules kept,
//!        ◀─────────────────────── Rules                                      every problem
//!        ──ArcSwap::store──▶ the next segment of every conversation uses them  with file:line
//! ```
//!
//! The rules in use are one `Arc<Rules>` behind an [`ArcSwap`]: a segment loads it once (an
//! atomic load, no lock), so a swap is atomic for every reader and a conversation never waits
//! for a reload nor sees half of one. Building takes the full lexicon's compile time, so it runs
//! on the blocking pool beside the old automaton, which keeps screening until the swap.
//!
//! What open conversations see: their next segment is screened with the new lexicon (no gap,
//! no segment dropped); they keep the policy they started with (thresholds, cooldown, idle
//! timeout, masking), because their counters and cooldowns were built under it; conversations
//! that start after the swap get the new policy. The alert history sizes are fixed at start-up.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, PolicySet};
use crate::dictionary::DictionaryError;
use crate::pipeline::Pipelines;
use crate::server::ServerError;
use crate::telemetry;

/// What screening reads per segment: the pipelines and the policy, swapped together.
#[derive(Debug)]
pub struct Rules {
    /// The screening pipelines: shared, and per tenant with a lexicon overlay.
    pub pipelines: Pipelines,
    /// Per-tenant policy, for conversations that start now.
    pub policy: PolicySet,
}

/// What a successful reload loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Entries in the shared lexicon.
    pub entries: usize,
    /// Context rules in the shared lexicon.
    pub context_rules: usize,
    /// Patterns in the shared automaton.
    pub patterns: usize,
    /// Tenants with a pipeline of their own.
    pub tenant_pipelines: usize,
    /// Tenants with a policy section of their own.
    pub tenant_policies: usize,
    /// From reading the files to the swap.
    pub elapsed: Duration,
    /// Swaps since start-up, this one included.
    pub generation: u64,
}

/// Which file a reload problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A lexicon file or directory (shared or a tenant overlay).
    Lexicon,
    /// The policy file.
    Policy,
}

impl ProblemKind {
    /// The name used as the precondition violation's type.
    pub fn as_str(self) -> &'static str {
        match self {
            ProblemKind::Lexicon => "LEXICON",
            ProblemKind::Policy => "POLICY",
        }
    }
}

/// One reason a reload failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Lexicon or policy.
    pub kind: ProblemKind,
    /// `file:line` when known, else the file or directory, else empty.
    pub location: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.location.as_str() {
            "" => f.write_str(&self.message),
            location => write!(f, "{location}: {}", self.message),
        }
    }
}

/// Why a reload failed; the rules in use are unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reload failed, the rules in use are kept: {}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct ReloadError(pub Vec<Problem>);

/// The rules in use and how to rebuild them.
#[derive(Debug)]
pub struct LiveRules {
    current: ArcSwap<Rules>,
    /// The configuration the server started with: lexicon directory and inline policy.
    base: Config,
    generation: AtomicU64,
    /// Held for a whole reload: two reloads at once would build twice and race to swap.
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl LiveRules {
    /// Starts with `rules`, built from `base` (which says where to reload from).
    pub fn new(rules: Rules, base: Config) -> Self {
        Self {
            current: ArcSwap::from_pointee(rules),
            base,
            generation: AtomicU64::new(0),
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// The rules in use now; hold the guard for one segment, not for a conversation.
    pub fn current(&self) -> arc_swap::Guard<Arc<Rules>> {
        self.current.load()
    }

    /// Reads the lexicon directory and policy file again, builds the new rules off the async
    /// runtime and swaps them in. Waits for a reload already running.
    ///
    /// # Errors
    /// Every problem in the files; the rules in use stay.
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let started = Instant::now();
        let base = self.base.clone();
        let built = tokio::task::spawn_blocking(move || build(&base)).await.unwrap_or_else(|e| {
            Err(ReloadError(vec![Problem {
                kind: ProblemKind::Lexicon,
                location: String::new(),
                message: format!("the build task failed: {e}"),
            }]))
        });
        let elapsed = started.elapsed();
        let rules = match built {
            Ok(rules) => rules,
            Err(error) => {
                telemetry::lexicon_reloaded(false, elapsed);
                tracing::warn!(problems = error.0.len(), %error, "reload failed; rules kept");
                return Err(error);
            }
        };
        let shared = rules.pipelines.shared().matcher();
        let report = ReloadReport {
            entries: shared.entries().len(),
            context_rules: shared.lexicon().rules.len(),
            patterns: shared.pattern_count(),
            tenant_pipelines: rules.pipelines.tenant_count(),
            tenant_policies: rules.policy.tenants.len(),
            elapsed,
            generation: self.generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        self.current.store(Arc::new(rules));
        telemetry::lexicon_reloaded(true, elapsed);
        telemetry::lexicon_loaded(Some(report.entries));
        tracing::info!(
            entries = report.entries,
            patterns = report.patterns,
            tenant_pipelines = report.tenant_pipelines,
            generation = report.generation,
            elapsed_ms = elapsed.as_millis() as u64,
            "lexicon and policy reloaded"
        );
        Ok(report)
    }
}

/// Builds rules from the files `base` names: the policy file (when the server was started with
/// one; a policy inline in the config file is kept), then the lexicons under that policy.
fn build(base: &Config) -> Result<Rules, ReloadError> {
    let mut config = base.clone();
    if let Some(path) = &base.policy_file {
        config.policy = PolicySet::load(path).map_err(|e| ReloadError(policy_problems(&e)))?;
    }
    let pipelines =
        crate::server::build_pipelines(&config).map_err(|e| ReloadError(lexicon_problems(&e)))?;
    Ok(Rules { pipelines, policy: config.policy })
}

/// A lexicon load error as problems, each located as precisely as the error allows.
fn lexicon_problems(error: &ServerError) -> Vec<Problem> {
    let problem = |location: String, message: String| Problem {
        kind: ProblemKind::Lexicon,
        location,
        message,
    };
    match error {
        ServerError::Dictionary(DictionaryError::Invalid(lines)) => lines
            .iter()
            .map(|line| problem(line.origin.to_string(), line.message.clone()))
            .collect(),
        ServerError::Dictionary(
            e @ (DictionaryError::EmptyPattern { origin, .. }
            | DictionaryError::Tokenise { origin, .. }),
        ) => {
            let text = e.to_string();
            let message = text.strip_prefix(&format!("{origin}: ")).unwrap_or(&text).to_owned();
            vec![problem(origin.to_string(), message)]
        }
        ServerError::Dictionary(DictionaryError::Io { path, source }) => {
            vec![problem(path.display().to_string(), format!("cannot read: {source}"))]
        }
        ServerError::Dictionary(DictionaryError::Empty(dir)) => {
            vec![problem(dir.display().to_string(), "no lexicon files (*.tsv)".to_owned())]
        }
        other => vec![problem(String::new(), error_chain(other))],
    }
}

/// A policy file error as problems: one per line of the message, located `file:line`.
fn policy_problems(error: &ConfigError) -> Vec<Problem> {
    let problem = |location: String, message: String| Problem {
        kind: ProblemKind::Policy,
        location,
        message,
    };
    match error {
        ConfigError::Policy { path, message } => {
            message.lines().map(|line| locate_policy_line(path, line)).collect()
        }
        ConfigError::Read { path, source } => {
            vec![problem(path.display().to_string(), format!("cannot read: {source}"))]
        }
        ConfigError::Invalid(lines) => {
            lines.iter().map(|l| problem(String::new(), l.clone())).collect()
        }
    }
}

/// `line N: rest` (how policy parsing reports) as `path:N` and `rest`.
fn locate_policy_line(path: &Path, line: &str) -> Problem {
    let (location, message) = line
        .strip_prefix("line ")
        .and_then(|rest| rest.split_once(": "))
        .filter(|(n, _)| n.parse::<usize>().is_ok())
        .map(|(n, rest)| (format!("{}:{n}", path.display()), rest.to_owned()))
        .unwrap_or_else(|| (path.display().to_string(), line.to_owned()));
    Problem { kind: ProblemKind::Policy, location, message }
}

/// An error and its causes on one line.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_lines_are_located() {
        let p =
            locate_policy_line(Path::new("/etc/policy.toml"), "line 7: tenants.x.cooldown: bad");
        assert_eq!(p.location, "/etc/policy.toml:7");
        assert_eq!(p.message, "tenants.x.cooldown: bad");
        let p = locate_policy_line(Path::new("p.toml"), "expected a table");
        assert_eq!(p.location, "p.toml");
    }
}
