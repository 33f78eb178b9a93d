//! Process configuration for `serve`: where to listen, which lexicon to load, and limits.
//!
//! The binary fills this from flags with `KASUHARA_*` environment fallbacks (clap); tests build
//! it directly and never touch the process environment.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::alert::bus::HistorySizes;

/// The default listen address: loopback only, because authentication is not configured here.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";
/// The default lexicon directory, relative to the working directory (the repo's own lexicon).
pub const DEFAULT_LEXICON_DIR: &str = "dictionaries";
/// How long open streams may take to finish after a shutdown signal before the server stops
/// waiting; long enough for in-flight verdicts, short enough for an orchestrator's kill timer.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// How many alerts a supervisor stream may fall behind before it skips ahead; a second or more
/// of alerts at the busiest rate we measure.
pub const DEFAULT_ALERT_BUFFER: usize = 4096;
/// How long a supervisor stream may stay silent before it gets a heartbeat: well inside the
/// idle timeouts of proxies and browsers (30-60 s), rare enough to cost nothing.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);
/// Events kept per tenant for supervisors who reconnect: minutes of a busy floor, a few
/// hundred kilobytes per tenant.
pub const DEFAULT_ALERT_HISTORY: usize = 1000;
/// The most events a tenant's history may keep, so a typo cannot take the memory.
pub const MAX_ALERT_HISTORY: usize = 1_000_000;

/// Settings for one server.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Per-tenant screening policy (thresholds and time limits).
    pub policy: PolicySet,
    /// Directory of lexicon `.tsv` files.
    pub lexicon_dir: PathBuf,
    /// Grace period for open streams at shutdown.
    pub shutdown_grace: Duration,
    /// Capacity of the alert fan-out per subscriber.
    pub alert_buffer: usize,
    /// Silence after which a supervisor stream gets a heartbeat.
    pub heartbeat_interval: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policy: PolicySet::default(),
            lexicon_dir: PathBuf::from(DEFAULT_LEXICON_DIR),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            alert_buffer: DEFAULT_ALERT_BUFFER,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
        }
    }
}

/// One tenant's policy for conduct over time (policy/categories.md, "Defaults for conduct over
/// time"); every field has the policy's default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    /// PERSISTENCE when the same demand or abuse family is raised for this many times within
    /// one conversation, or within one customer's contacts inside `repeat_window` (default 4).
    pub persistence_repeats: u32,
    /// PERSISTENCE when a customer's contact is at least this many within `repeat_window` and
    /// repeats a demand already alerted in an earlier contact (default 3).
    pub repeat_contacts: u32,
    /// How far back earlier contacts of the same customer count (default 24h).
    pub repeat_window: Duration,
    /// RESTRAINT when a call runs longer than this while the customer keeps pressing the same
    /// demand (default 60m).
    pub restraint_after: Duration,
    /// After an alert of a category, further alerts of that category at the same or lower
    /// severity are held back for this long (segment time); a higher severity always alerts
    /// (default 60s).
    pub cooldown: Duration,
    /// A conversation with no message for this long is closed with a summary (default 10m).
    pub idle_timeout: Duration,
    /// Entries this tenant adds to, or disables in, the shared lexicon.
    pub lexicon: LexiconOverlay,
    /// Mask phone numbers, e-mail addresses, card-like numbers and street numbers in evidence
    /// (default true).
    pub mask_personal_data: bool,
    /// Events kept for supervisors who reconnect with a cursor, and alerts that can still be
    /// acknowledged (default 1000).
    pub alert_history: usize,
}

/// A tenant's changes to the shared lexicon: a directory of extra lexicon files (entries and
/// context rules, the same format as `dictionaries/`), and ids of entries or rules to switch
/// off. A tenant without one screens with the shared automaton.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LexiconOverlay {
    /// Extra `*.tsv` files, resolved against the policy file's directory.
    pub dir: Option<PathBuf>,
    /// Entry or context-rule ids that raise (or silence) nothing for this tenant.
    pub disable: Vec<String>,
}

impl LexiconOverlay {
    /// No change to the shared lexicon.
    pub fn is_empty(&self) -> bool {
        self.dir.is_none() && self.disable.is_empty()
    }
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            persistence_repeats: 4,
            repeat_contacts: 3,
            repeat_window: Duration::from_secs(24 * 3600),
            restraint_after: Duration::from_secs(3600),
            cooldown: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(600),
            lexicon: LexiconOverlay::default(),
            mask_personal_data: true,
            alert_history: DEFAULT_ALERT_HISTORY,
        }
    }
}

/// The policy file: defaults plus per-tenant overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySet {
    /// Applies to every tenant without its own section.
    pub default: TenantPolicy,
    /// Overrides by tenant id.
    pub tenants: HashMap<String, TenantPolicy>,
}

impl PolicySet {
    /// The policy for `tenant_id`.
    pub fn for_tenant(&self, tenant_id: &str) -> &TenantPolicy {
        self.tenants.get(tenant_id).unwrap_or(&self.default)
    }

    /// Each tenant's alert history size, for the alert hub.
    pub fn alert_history(&self) -> HistorySizes {
        HistorySizes {
            default: self.default.alert_history,
            tenants: self.tenants.iter().map(|(id, p)| (id.clone(), p.alert_history)).collect(),
        }
    }

    /// Reads a policy TOML file (see `examples/policy.toml`).
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown keys, or bad values, each naming the key.
    pub fn load(path: &Path) -> Result<PolicySet, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        PolicySet::parse_in(&text, base)
            .map_err(|message| ConfigError::Policy { path: path.to_owned(), message })
    }

    /// Parses policy TOML; every bad value is reported, one per line. Relative lexicon
    /// overlay directories are taken as they are (relative to the working directory).
    ///
    /// # Errors
    /// A message listing every problem.
    pub fn parse(text: &str) -> Result<PolicySet, String> {
        PolicySet::parse_in(text, Path::new(""))
    }

    /// Parses policy TOML whose relative paths are relative to `base`.
    ///
    /// # Errors
    /// A message listing every problem.
    pub fn parse_in(text: &str, base: &Path) -> Result<PolicySet, String> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut errors = Vec::new();
        let default = file.default.unwrap_or_default().apply(
            &TenantPolicy::default(),
            "default",
            base,
            &mut errors,
        );
        let tenants = file
            .tenants
            .into_iter()
            .map(|(id, section)| {
                let policy = section.apply(&default, &format!("tenants.{id}"), base, &mut errors);
                (id, policy)
            })
            .collect();
        if errors.is_empty() { Ok(PolicySet { default, tenants }) } else { Err(errors.join("\n")) }
    }
}

/// Why configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The policy file is invalid.
    #[error("invalid policy file {path}:\n{message}")]
    Policy {
        /// The file.
        path: PathBuf,
        /// Every problem found.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Option<PolicySection>,
    #[serde(default)]
    tenants: HashMap<String, PolicySection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    persistence_repeats: Option<u32>,
    repeat_contacts: Option<u32>,
    repeat_window: Option<String>,
    restraint_after: Option<String>,
    cooldown: Option<String>,
    idle_timeout: Option<String>,
    lexicon_overlay: Option<PathBuf>,
    lexicon_disable: Option<Vec<String>>,
    mask_personal_data: Option<bool>,
    alert_history: Option<usize>,
}

impl PolicySection {
    fn apply(
        self,
        base: &TenantPolicy,
        section: &str,
        dir: &Path,
        errors: &mut Vec<String>,
    ) -> TenantPolicy {
        let mut out = base.clone();
        if let Some(mask) = self.mask_personal_data {
            out.mask_personal_data = mask;
        }
        if let Some(overlay) = self.lexicon_overlay {
            out.lexicon.dir = Some(dir.join(overlay));
        }
        if let Some(disable) = self.lexicon_disable {
            if let Some(bad) = disable.iter().find(|id| id.trim().is_empty()) {
                errors.push(format!("{section}.lexicon_disable: empty id {bad:?}"));
            }
            out.lexicon.disable = disable;
        }
        let mut count = |key: &str, value: Option<u32>, slot: &mut u32| {
            if let Some(v) = value {
                if v < 2 {
                    errors.push(format!("{section}.{key} = {v}: must be at least 2"));
                } else {
                    *slot = v;
                }
            }
        };
        count("persistence_repeats", self.persistence_repeats, &mut out.persistence_repeats);
        count("repeat_contacts", self.repeat_contacts, &mut out.repeat_contacts);
        let mut duration = |key: &str, value: Option<String>, slot: &mut Duration| {
            if let Some(v) = value {
                match parse_duration(&v) {
                    Ok(d) if !d.is_zero() => *slot = d,
                    Ok(_) => errors.push(format!("{section}.{key} = {v:?}: must be positive")),
                    Err(e) => errors.push(format!("{section}.{key}: {e}")),
                }
            }
        };
        duration("repeat_window", self.repeat_window, &mut out.repeat_window);
        duration("restraint_after", self.restraint_after, &mut out.restraint_after);
        duration("cooldown", self.cooldown, &mut out.cooldown);
        duration("idle_timeout", self.idle_timeout, &mut out.idle_timeout);
        match self.alert_history {
            Some(n) if n == 0 || n > MAX_ALERT_HISTORY => errors.push(format!(
                "{section}.alert_history = {n}: must be between 1 and {MAX_ALERT_HISTORY}"
            )),
            Some(n) => out.alert_history = n,
            None => {}
        }
        out
    }
}

/// Parses a duration written as `250ms`, `5s`, `2m` or `24h`.
///
/// # Errors
/// A message naming the value when it is not a number followed by `ms`, `s` or `m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .ok_or_else(|| format!("duration {text:?} needs a unit: ms, s, m or h"))?;
    let n: u64 =
        number.parse().map_err(|_| format!("duration {text:?} must start with a number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("duration {text:?} has unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations accept the three documented units and name the bad value otherwise.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86400)));
        for bad in ["5", "s", "5d", "-1s", ""] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "help: {err}");
        }
    }

    /// A tenant section overrides only its own keys; the rest come from [default].
    #[test]
    fn policy_overrides() {
        let set = PolicySet::parse(
            "[default]\npersistence_repeats = 5\n[tenants.acme]\ncooldown = \"10s\"\n",
        )
        .expect("valid");
        assert_eq!(set.for_tenant("other").persistence_repeats, 5);
        let acme = set.for_tenant("acme");
        assert_eq!(acme.persistence_repeats, 5);
        assert_eq!(acme.cooldown, Duration::from_secs(10));
        assert_eq!(acme.restraint_after, Duration::from_secs(3600));
        let set = PolicySet::parse("[tenants.acme]\nalert_history = 50\n").expect("valid");
        assert_eq!(set.alert_history().for_tenant("acme"), 50);
        assert_eq!(set.alert_history().for_tenant("other"), DEFAULT_ALERT_HISTORY);
        let err = PolicySet::parse("[default]\nalert_history = 2000000\n").expect_err("huge");
        assert!(err.contains("default.alert_history"), "help: {err}");
    }

    /// The shipped example parses and says what it claims.
    #[test]
    fn example_policy_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.toml");
        let set = PolicySet::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(set.default, TenantPolicy::default(), "help: [default] documents the defaults");
        assert_eq!(set.for_tenant("example-bank").persistence_repeats, 3);
    }

    /// Every bad value is reported with its key; unknown keys are refused.
    #[test]
    fn policy_errors_name_the_key() {
        let err = PolicySet::parse("[default]\npersistence_repeats = 1\ncooldown = \"soon\"\n")
            .expect_err("invalid");
        assert!(err.contains("default.persistence_repeats = 1"), "help: {err}");
        assert!(err.contains("default.cooldown"), "help: {err}");
        let err = PolicySet::parse("[default]\npersistance = 3\n").expect_err("typo");
        assert!(err.contains("persistance"), "help: {err}");
    }

    /// A tenant's lexicon overlay resolves against the policy file's directory and does not
    /// leak into other tenants.
    #[test]
    fn lexicon_overlay_per_tenant() {
        let set = PolicySet::parse_in(
            "[tenants.clinic]\nlexicon_overlay = \"overlays/clinic\"\nlexicon_disable = [\"attack.noroma\"]\n",
            Path::new("/etc/kasuhara"),
        )
        .expect("valid");
        let clinic = &set.for_tenant("clinic").lexicon;
        assert_eq!(clinic.dir.as_deref(), Some(Path::new("/etc/kasuhara/overlays/clinic")));
        assert_eq!(clinic.disable, vec!["attack.noroma".to_owned()]);
        assert!(set.for_tenant("other").lexicon.is_empty());
    }
}
