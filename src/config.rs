//! Configuration: where to listen, which lexicon and policy to load, limits and logs.
//!
//! Four layers, each overriding the one before: built-in defaults (the consts below), one TOML
//! config file (`--config`, see `examples/kasuhara-guard.toml`), `KASUHARA_*` environment
//! variables, and command-line flags. [`Settings::resolve`] merges them and reports every bad
//! value at once, located as `file:line:` or by the variable's name (linkerd's `env.rs`
//! approach). The environment is read through a lookup function, so tests pass a map and
//! never touch the process environment.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::alert::bus::HistorySizes;
pub use crate::telemetry::LogFormat;
use toml::Spanned;

/// The default listen address: loopback only, because authentication is not configured here.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";
/// The default lexicon directory, relative to the working directory (the repo's own lexicon).
pub const DEFAULT_LEXICON_DIR: &str = "dictionaries";
/// How long open streams may take to finish after a shutdown signal before the server stops
/// waiting; long enough for in-flight verdicts, short enough for an orchestrator's kill timer.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The default Prometheus endpoint: loopback (metrics name lexicon categories, which is not for
/// everyone), on 9464, the port Prometheus's default-port allocations list for OpenTelemetry's
/// Prometheus exporter, so it does not collide with node_exporter and friends.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9464";
/// The default log filter: lifecycle events, warnings and errors.
pub const DEFAULT_LOG_FILTER: &str = "info";
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

/// How long any one Redis call may take before it counts as failed: far above a healthy
/// round trip (~0.1 ms here), short enough that a stalled Redis is noticed within a second.
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// The approximate length cap of each tenant's alert stream in Redis: ten times the default
/// replay history, so a restarted node always finds a full history.
pub const DEFAULT_REDIS_STREAM_MAXLEN: usize = 10_000;
/// Alert events a node buffers while Redis is unreachable: minutes of a busy node's alerts,
/// tens of megabytes at most.
pub const DEFAULT_REDIS_BUFFER: usize = 100_000;

/// Scale-out on Redis (see docs/scale-out.md): where it is and how it is used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://HOST:PORT[/DB]`, checked at start.
    pub url: String,
    /// The bound on every Redis call.
    pub timeout: Duration,
    /// `MAXLEN ~` of each tenant's alert stream.
    pub stream_maxlen: usize,
    /// Alert events buffered while Redis is unreachable.
    pub buffer: usize,
}

impl RedisSettings {
    /// Defaults for everything but the URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            stream_maxlen: DEFAULT_REDIS_STREAM_MAXLEN,
            buffer: DEFAULT_REDIS_BUFFER,
        }
    }
}

/// Checks a Redis URL the way the client will read it.
fn check_redis_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
        return Err("must start with redis:// (or rediss://)".to_owned());
    }
    redis::Client::open(url).map(drop).map_err(|e| e.to_string())
}

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
    /// Admission limits: open conversations, segments per second.
    pub limits: crate::limits::Limits,
    /// Silence after which a supervisor stream gets a heartbeat.
    pub heartbeat_interval: Duration,
    /// Shared alert bus and call state on Redis; `None` runs one node in memory.
    pub redis: Option<RedisSettings>,
    /// Who may call: bearer tokens, or off (loopback only).
    pub access: crate::auth::Access,
    /// TLS for the gRPC listener (plain text when absent).
    pub tls: Option<crate::auth::TlsPem>,
    /// The policy file `policy` was read from, re-read on reload (None: the policy came from
    /// the config file or the defaults and stays as it is).
    pub policy_file: Option<PathBuf>,
    /// The evidence log of alerts and acknowledgements; off when None.
    pub evidence_log: Option<crate::evidence::EvidenceLogConfig>,
    /// Reload the lexicons and policy file on SIGHUP (the binary; never in-process tests,
    /// where every server in the process would get the signal).
    pub reload_on_sighup: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            policy: PolicySet::default(),
            lexicon_dir: PathBuf::from(DEFAULT_LEXICON_DIR),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            alert_buffer: DEFAULT_ALERT_BUFFER,
            limits: crate::limits::Limits::default(),
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            redis: None,
            access: crate::auth::Access::off(),
            tls: None,
            policy_file: None,
            evidence_log: None,
            reload_on_sighup: false,
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

    /// Reads a policy TOML file (see `examples/policy.toml`); relative overlay directories
    /// are relative to the file's directory.
    ///
    /// # Errors
    /// Unreadable file, bad TOML, unknown keys, or bad values, each with its line and key.
    pub fn load(path: &Path) -> Result<PolicySet, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        PolicySet::parse_in(&text, base)
            .map_err(|message| ConfigError::Policy { path: path.to_owned(), message })
    }

    /// Parses policy TOML; every bad value is reported, one per line, as `line N: key: problem`.
    /// Relative lexicon overlay directories are taken as they are (relative to the working
    /// directory).
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
        let source = Source { name: None, text };
        let file: PolicyFile = source.parse()?;
        let mut errors = Vec::new();
        let set = file.resolve("", base, &source, &mut errors);
        if errors.is_empty() { Ok(set) } else { Err(errors.join("\n")) }
    }
}

/// Where the Prometheus endpoint listens, or that it is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricsAddr {
    /// No metrics endpoint.
    Off,
    /// Serve `GET /metrics` here.
    At(SocketAddr),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "off" | "" => Ok(MetricsAddr::Off),
            addr => addr.parse().map(MetricsAddr::At).map_err(|_| {
                format!("{addr:?} is not an address like 127.0.0.1:9464 (or \"off\")")
            }),
        }
    }
}

impl std::fmt::Display for MetricsAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MetricsAddr::Off => f.write_str("off"),
            MetricsAddr::At(addr) => addr.fmt(f),
        }
    }
}

/// Everything `serve` runs with: the server's [`Config`] plus the process settings around it
/// (ports, logs). Built by [`Settings::resolve`] from defaults, the config file, `KASUHARA_*`
/// variables and flags, each overriding the one before.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The config file read, if any.
    pub file: Option<PathBuf>,
    /// gRPC listen address.
    pub addr: SocketAddr,
    /// Prometheus endpoint.
    pub metrics_addr: MetricsAddr,
    /// Log line format.
    pub log_format: LogFormat,
    /// Log filter (`tracing_subscriber::EnvFilter` syntax).
    pub log_filter: String,
    /// OTLP/gRPC collector for traces (builds with the `otlp` feature only).
    pub otlp_endpoint: Option<String>,
    /// The policy file the tenant policy came from, if not the config file itself.
    pub policy_file: Option<PathBuf>,
    /// The tokens file `server.access` was loaded from (`[auth] tokens_file`).
    pub tokens_file: Option<PathBuf>,
    /// The PEM files `server.tls` was read from (`[tls]`).
    pub tls_files: Option<TlsFiles>,
    /// What the server itself needs.
    pub server: Config,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            file: None,
            // The consts are valid literals; `config::tests::defaults_parse` pins that.
            addr: DEFAULT_ADDR.parse().expect("DEFAULT_ADDR is an address"),
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("DEFAULT_METRICS_ADDR parses"),
            log_format: LogFormat::Text,
            log_filter: DEFAULT_LOG_FILTER.to_owned(),
            otlp_endpoint: None,
            policy_file: None,
            tokens_file: None,
            tls_files: None,
            server: Config::default(),
        }
    }
}

/// Where the TLS identity comes from (`[tls]` in the config file).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA for client certificates; when set, clients must present one (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Reads the PEM files.
    ///
    /// # Errors
    /// A file that cannot be read, named with its key.
    pub fn read(&self) -> Result<crate::auth::TlsPem, String> {
        let read = |key: &str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| format!("tls.{key}: cannot read {}: {e}", path.display()))
        };
        Ok(crate::auth::TlsPem {
            cert: read("cert", &self.cert)?,
            key: read("key", &self.key)?,
            client_ca: self.client_ca.as_deref().map(|p| read("client_ca", p)).transpose()?,
        })
    }
}

/// Settings given on the command line or in the environment; `None` leaves the value to the
/// layer below.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// The config file (`--config`, `KASUHARA_CONFIG`).
    pub config: Option<PathBuf>,
    /// `--addr`, `KASUHARA_ADDR`.
    pub addr: Option<SocketAddr>,
    /// `--metrics-addr`, `KASUHARA_METRICS_ADDR`.
    pub metrics_addr: Option<MetricsAddr>,
    /// `--lexicon-dir`, `KASUHARA_LEXICON_DIR`.
    pub lexicon_dir: Option<PathBuf>,
    /// `--policy`, `KASUHARA_POLICY`: a policy-only file that replaces `[policy]`.
    pub policy: Option<PathBuf>,
    /// `--shutdown-grace`, `KASUHARA_SHUTDOWN_GRACE`.
    pub shutdown_grace: Option<Duration>,
    /// `--alert-buffer`, `KASUHARA_ALERT_BUFFER`.
    pub alert_buffer: Option<usize>,
    /// `--log-format`, `KASUHARA_LOG_FORMAT`.
    pub log_format: Option<LogFormat>,
    /// `--log-filter`, `KASUHARA_LOG`.
    pub log_filter: Option<String>,
    /// `--otlp-endpoint`, `KASUHARA_OTLP_ENDPOINT`.
    pub otlp_endpoint: Option<String>,
    /// `--redis`, `KASUHARA_REDIS`: the Redis URL that turns scale-out on.
    pub redis: Option<String>,
}

impl Overrides {
    /// Reads the `KASUHARA_*` variables through `lookup` (`std::env::var` in the binary, a map
    /// in tests). An empty variable counts as unset.
    ///
    /// # Errors
    /// Every variable whose value does not parse, by name.
    pub fn from_env(lookup: impl Fn(&str) -> Option<String>) -> Result<Overrides, ConfigError> {
        let mut errors = Vec::new();
        let mut get = |name: &str, parse: &dyn Fn(&str) -> Result<(), String>| {
            let value = lookup(name).filter(|v| !v.is_empty())?;
            match parse(&value) {
                Ok(()) => Some(value),
                Err(e) => {
                    errors.push(format!("{name}={value:?}: {e}"));
                    None
                }
            }
        };
        fn check<T: std::str::FromStr>(v: &str) -> Result<(), String>
        where
            T::Err: std::fmt::Display,
        {
            v.parse::<T>().map(drop).map_err(|e| e.to_string())
        }
        let any = |_: &str| Ok(());
        let format = |v: &str| {
            <LogFormat as clap::ValueEnum>::from_str(v, true).map(drop).map_err(|e| e.to_string())
        };
        let duration = |v: &str| parse_duration(v).map(drop);
        let raw = [
            get("KASUHARA_CONFIG", &any),
            get("KASUHARA_ADDR", &check::<SocketAddr>),
            get("KASUHARA_METRICS_ADDR", &check::<MetricsAddr>),
            get("KASUHARA_LEXICON_DIR", &any),
            get("KASUHARA_POLICY", &any),
            get("KASUHARA_SHUTDOWN_GRACE", &duration),
            get("KASUHARA_ALERT_BUFFER", &check::<usize>),
            get("KASUHARA_LOG_FORMAT", &format),
            get("KASUHARA_LOG", &any),
            get("KASUHARA_OTLP_ENDPOINT", &any),
            get("KASUHARA_REDIS", &check_redis_url),
        ];
        if !errors.is_empty() {
            return Err(ConfigError::Invalid(errors));
        }
        // Every value was checked above, so these parses succeed.
        let [config, addr, metrics, lexicon, policy, grace, buffer, format, filter, otlp, redis] =
            raw;
        Ok(Overrides {
            config: config.map(PathBuf::from),
            addr: addr.and_then(|v| v.parse().ok()),
            metrics_addr: metrics.and_then(|v| v.parse().ok()),
            lexicon_dir: lexicon.map(PathBuf::from),
            policy: policy.map(PathBuf::from),
            shutdown_grace: grace.and_then(|v| parse_duration(&v).ok()),
            alert_buffer: buffer.and_then(|v| v.parse().ok()),
            log_format: format.and_then(|v| clap::ValueEnum::from_str(&v, true).ok()),
            log_filter: filter,
            otlp_endpoint: otlp,
            redis,
        })
    }

    fn apply(&self, settings: &mut Settings) {
        let Overrides {
            config: _, // chosen before the file is read
            addr,
            metrics_addr,
            lexicon_dir,
            policy,
            shutdown_grace,
            alert_buffer,
            log_format,
            log_filter,
            otlp_endpoint,
            redis,
        } = self.clone();
        settings.addr = addr.unwrap_or(settings.addr);
        settings.metrics_addr = metrics_addr.unwrap_or(settings.metrics_addr);
        settings.server.lexicon_dir = lexicon_dir.unwrap_or(settings.server.lexicon_dir.clone());
        settings.policy_file = policy.or(settings.policy_file.take());
        settings.server.shutdown_grace = shutdown_grace.unwrap_or(settings.server.shutdown_grace);
        settings.server.alert_buffer = alert_buffer.unwrap_or(settings.server.alert_buffer);
        settings.log_format = log_format.unwrap_or(settings.log_format);
        settings.log_filter = log_filter.unwrap_or(settings.log_filter.clone());
        settings.otlp_endpoint = otlp_endpoint.or(settings.otlp_endpoint.take());
        if let Some(url) = redis {
            let current = settings.server.redis.take();
            settings.server.redis =
                Some(RedisSettings { url, ..current.unwrap_or_else(|| RedisSettings::new("")) });
        }
    }
}

/// The config file (see `examples/kasuhara-guard.toml`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default)]
    server: ServerSection,
    #[serde(default)]
    limits: LimitsSection,
    #[serde(default)]
    lexicon: LexiconSection,
    #[serde(default)]
    log: LogSection,
    redis: Option<RedisSection>,
    #[serde(default)]
    auth: AuthSection,
    tls: Option<TlsSection>,
    #[serde(default)]
    evidence_log: EvidenceLogSection,
    policy: Option<PolicyFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    url: Spanned<String>,
    timeout: Option<Spanned<String>>,
    stream_maxlen: Option<Spanned<usize>>,
    buffer: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSection {
    tokens_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: PathBuf,
    key: PathBuf,
    client_ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvidenceLogSection {
    path: Option<PathBuf>,
    fsync: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerSection {
    addr: Option<Spanned<String>>,
    metrics_addr: Option<Spanned<String>>,
    shutdown_grace: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsSection {
    alert_buffer: Option<Spanned<usize>>,
    max_open_conversations: Option<Spanned<usize>>,
    max_open_per_tenant: Option<Spanned<usize>>,
    max_segments_per_second: Option<Spanned<usize>>,
    max_subscribers_per_tenant: Option<Spanned<usize>>,
    max_message_bytes: Option<Spanned<usize>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LexiconSection {
    dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogSection {
    format: Option<LogFormat>,
    filter: Option<String>,
    otlp_endpoint: Option<String>,
}

impl Settings {
    /// The effective settings: defaults, then the config file (`flags.config`, else
    /// `env.config`), then `env`, then `flags`; then the policy file, if one is named, replaces
    /// the file's `[policy]`. Relative paths in the config file are relative to the working
    /// directory, like the flags.
    ///
    /// # Errors
    /// An unreadable file, a syntax error or an invalid value, each located as `file:line:`
    /// (or by the variable's name), all problems at once.
    pub fn resolve(env: &Overrides, flags: &Overrides) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        if let Some(path) = flags.config.as_ref().or(env.config.as_ref()) {
            let text = std::fs::read_to_string(path)
                .map_err(|source| ConfigError::Read { path: path.clone(), source })?;
            settings.apply_file(path, &text)?;
        }
        env.apply(&mut settings);
        flags.apply(&mut settings);
        if let Some(path) = &settings.policy_file {
            settings.server.policy = PolicySet::load(path)?;
            settings.server.policy_file = Some(path.clone());
        }
        settings.validate()?;
        Ok(settings)
    }

    /// Reads config file `text` (named `path` in messages) over these settings.
    fn apply_file(&mut self, path: &Path, text: &str) -> Result<(), ConfigError> {
        let source = Source { name: Some(path), text };
        let file: ConfigFile = source.parse().map_err(|e| ConfigError::Invalid(vec![e]))?;
        let mut errors = Vec::new();
        self.file = Some(path.to_owned());
        if let Some(addr) = source.value(&file.server.addr, "server.addr", &mut errors, |t| {
            t.parse::<SocketAddr>().map_err(|e| e.to_string())
        }) {
            self.addr = addr;
        }
        if let Some(addr) =
            source.value(&file.server.metrics_addr, "server.metrics_addr", &mut errors, |t| {
                t.parse::<MetricsAddr>()
            })
        {
            self.metrics_addr = addr;
        }
        if let Some(grace) = source.value(
            &file.server.shutdown_grace,
            "server.shutdown_grace",
            &mut errors,
            parse_duration,
        ) {
            self.server.shutdown_grace = grace;
        }
        if let Some(v) = &file.limits.alert_buffer {
            match *v.get_ref() {
                0 => errors.push(format!(
                    "{}limits.alert_buffer: must be at least 1",
                    source.at(v.span())
                )),
                n => self.server.alert_buffer = n,
            }
        }
        let limits = &mut self.server.limits;
        let mut max_segments = limits.max_segments_per_second as usize;
        for (key, value, slot) in [
            (
                "max_open_conversations",
                &file.limits.max_open_conversations,
                &mut limits.max_open_conversations,
            ),
            (
                "max_open_per_tenant",
                &file.limits.max_open_per_tenant,
                &mut limits.max_open_per_tenant,
            ),
            ("max_segments_per_second", &file.limits.max_segments_per_second, &mut max_segments),
            (
                "max_subscribers_per_tenant",
                &file.limits.max_subscribers_per_tenant,
                &mut limits.max_subscribers_per_tenant,
            ),
            ("max_message_bytes", &file.limits.max_message_bytes, &mut limits.max_message_bytes),
        ] {
            if let Some(v) = value {
                match *v.get_ref() {
                    0 => errors
                        .push(format!("{}limits.{key}: must be at least 1", source.at(v.span()))),
                    n if key == "max_segments_per_second" && n > u32::MAX as usize => {
                        errors.push(format!(
                            "{}limits.{key}: must be at most {}",
                            source.at(v.span()),
                            u32::MAX
                        ))
                    }
                    n => *slot = n,
                }
            }
        }
        // Checked against u32::MAX just above.
        limits.max_segments_per_second = u32::try_from(max_segments).unwrap_or(u32::MAX);
        if let Some(dir) = file.lexicon.dir {
            self.server.lexicon_dir = dir;
        }
        if let Some(tokens) = file.auth.tokens_file {
            match crate::auth::TokenStore::load(&tokens) {
                Ok(store) => self.server.access = crate::auth::Access::tokens(store),
                Err(e) => errors.push(format!("auth.tokens_file: {e}")),
            }
            self.tokens_file = Some(tokens);
        }
        if let Some(tls) = file.tls {
            let files = TlsFiles { cert: tls.cert, key: tls.key, client_ca: tls.client_ca };
            match files.read() {
                Ok(pem) => self.server.tls = Some(pem),
                Err(e) => errors.push(e),
            }
            self.tls_files = Some(files);
        }
        self.log_format = file.log.format.unwrap_or(self.log_format);
        self.log_filter = file.log.filter.unwrap_or(self.log_filter.clone());
        self.otlp_endpoint = file.log.otlp_endpoint.filter(|e| !e.is_empty());
        if let Some(section) = &file.redis {
            let mut redis = RedisSettings::new(section.url.get_ref().clone());
            if let Some(timeout) =
                source.value(&section.timeout, "redis.timeout", &mut errors, parse_duration)
            {
                redis.timeout = timeout;
            }
            for (value, name, target) in [
                (&section.stream_maxlen, "redis.stream_maxlen", &mut redis.stream_maxlen),
                (&section.buffer, "redis.buffer", &mut redis.buffer),
            ] {
                match value.as_ref().map(|v| (*v.get_ref(), v.span())) {
                    Some((0, span)) => {
                        errors.push(format!("{}{name}: must be at least 1", source.at(span)))
                    }
                    Some((n, _)) => *target = n,
                    None => {}
                }
            }
            if let Err(e) = check_redis_url(&redis.url) {
                errors.push(format!("{}redis.url: {e}", source.at(section.url.span())));
            }
            self.server.redis = Some(redis);
        }
        let fsync =
            source.value(&file.evidence_log.fsync, "evidence_log.fsync", &mut errors, |t| {
                t.parse::<crate::evidence::FsyncPolicy>()
            });
        if let Some(path) = file.evidence_log.path {
            let fsync = fsync.unwrap_or_default();
            self.server.evidence_log = Some(crate::evidence::EvidenceLogConfig { path, fsync });
        }
        if let Some(policy) = file.policy {
            // Overlay directories are relative to the file that names them, as in a policy file.
            let base = path.parent().unwrap_or(Path::new("."));
            self.server.policy = policy.resolve("policy.", base, &source, &mut errors);
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(errors)) }
    }

    /// Checks what no single layer can: values that are fine alone but not together.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.server.alert_buffer == 0 {
            errors.push("alert_buffer: must be at least 1".to_owned());
        }
        // Port 0 asks for any free port, twice over, which cannot clash.
        if self.addr.port() != 0 && self.metrics_addr == MetricsAddr::At(self.addr) {
            errors.push(format!("metrics_addr {} is the gRPC address as well", self.addr));
        }
        if let Some(redis) = &self.server.redis
            && let Err(e) = check_redis_url(&redis.url)
        {
            errors.push(format!("redis: {:?} {e}", redis.url));
        }
        if self.otlp_endpoint.is_some() && !cfg!(feature = "otlp") {
            errors.push(
                "otlp_endpoint: this build has no OTLP export (build with --features otlp)"
                    .to_owned(),
            );
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(errors)) }
    }

    /// The effective settings as a config file, every key written out: what `config check`
    /// prints, and a file that reads back to the same settings.
    pub fn to_toml(&self) -> String {
        use std::fmt::Write as _;
        let q = |s: &str| toml::Value::String(s.to_owned()).to_string();
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = writeln!(out, "[server]\naddr = {}", q(&self.addr.to_string()));
        let _ = writeln!(out, "metrics_addr = {}", q(&self.metrics_addr.to_string()));
        let _ =
            writeln!(out, "shutdown_grace = {}\n", q(&format_duration(self.server.shutdown_grace)));
        let _ = writeln!(out, "[limits]\nalert_buffer = {}", self.server.alert_buffer);
        let limits = &self.server.limits;
        let _ = writeln!(out, "max_open_conversations = {}", limits.max_open_conversations);
        let _ = writeln!(out, "max_open_per_tenant = {}", limits.max_open_per_tenant);
        let _ = writeln!(out, "max_segments_per_second = {}", limits.max_segments_per_second);
        let _ = writeln!(out, "max_subscribers_per_tenant = {}", limits.max_subscribers_per_tenant);
        let _ = writeln!(out, "max_message_bytes = {}\n", limits.max_message_bytes);
        let path = |p: &Path| {
            q(&std::path::absolute(p).unwrap_or_else(|_| p.to_owned()).to_string_lossy())
        };
        if let Some(tokens) = &self.tokens_file {
            let _ = writeln!(out, "[auth]\ntokens_file = {}\n", path(tokens));
        }
        if let Some(tls) = &self.tls_files {
            let _ = writeln!(out, "[tls]\ncert = {}\nkey = {}", path(&tls.cert), path(&tls.key));
            if let Some(ca) = &tls.client_ca {
                let _ = writeln!(out, "client_ca = {}", path(ca));
            }
            let _ = writeln!(out);
        }
        let _ =
            writeln!(out, "[lexicon]\ndir = {}\n", q(&self.server.lexicon_dir.to_string_lossy()));
        let format = match self.log_format {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        };
        let _ = writeln!(out, "[log]\nformat = {}\nfilter = {}", q(format), q(&self.log_filter));
        if let Some(endpoint) = &self.otlp_endpoint {
            let _ = writeln!(out, "otlp_endpoint = {}", q(endpoint));
        }
        if let Some(redis) = &self.server.redis {
            let _ = writeln!(
                out,
                "\n[redis]\nurl = {}\ntimeout = {}\nstream_maxlen = {}\nbuffer = {}",
                q(&redis.url),
                q(&format_duration(redis.timeout)),
                redis.stream_maxlen,
                redis.buffer
            );
        }
        if let Some(log) = &self.server.evidence_log {
            let path = q(&log.path.to_string_lossy());
            let _ = writeln!(
                out,
                "\n[evidence_log]\npath = {path}\nfsync = {}",
                q(&log.fsync.to_string())
            );
        }
        let mut section = |name: &str, p: &TenantPolicy| {
            let _ = writeln!(out, "\n[{name}]");
            let _ = writeln!(out, "persistence_repeats = {}", p.persistence_repeats);
            let _ = writeln!(out, "repeat_contacts = {}", p.repeat_contacts);
            for (key, d) in [
                ("repeat_window", p.repeat_window),
                ("restraint_after", p.restraint_after),
                ("cooldown", p.cooldown),
                ("idle_timeout", p.idle_timeout),
            ] {
                let _ = writeln!(out, "{key} = {}", q(&format_duration(d)));
            }
            let _ = writeln!(out, "mask_personal_data = {}", p.mask_personal_data);
            if let Some(dir) = &p.lexicon.dir {
                // Absolute, so the printed file means the same wherever it is saved.
                let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
                let _ = writeln!(out, "lexicon_overlay = {}", q(&dir.to_string_lossy()));
            }
            if !p.lexicon.disable.is_empty() {
                let ids: Vec<String> = p.lexicon.disable.iter().map(|id| q(id)).collect();
                let _ = writeln!(out, "lexicon_disable = [{}]", ids.join(", "));
            }
        };
        section("policy.default", &self.server.policy.default);
        let mut tenants: Vec<_> = self.server.policy.tenants.iter().collect();
        tenants.sort_by_key(|(id, _)| id.as_str());
        for (id, policy) in tenants {
            section(&format!("policy.tenants.{}", toml_key(id)), policy);
        }
        out
    }
}

/// A tenant id as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(id: &str) -> String {
    if !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        id.to_owned()
    } else {
        toml::Value::String(id.to_owned()).to_string()
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
        /// Every problem found, one per line, each with its line number.
        message: String,
    },
    /// Settings are invalid: every problem, each naming where it came from
    /// (`file:line: key`, `KASUHARA_X` or a flag).
    #[error("invalid configuration:\n{}", .0.join("\n"))]
    Invalid(Vec<String>),
}

/// The policy tables, as they appear in a policy file or under `[policy]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default: Option<PolicySection>,
    #[serde(default)]
    tenants: HashMap<String, PolicySection>,
}

impl PolicyFile {
    /// The policy set these tables describe; problems go to `errors`, located in `source`.
    fn resolve(
        self,
        prefix: &str,
        base: &Path,
        source: &Source<'_>,
        errors: &mut Vec<String>,
    ) -> PolicySet {
        let default = self.default.unwrap_or_default().apply(
            &TenantPolicy::default(),
            &format!("{prefix}default"),
            (base, source),
            errors,
        );
        let tenants = self
            .tenants
            .into_iter()
            .map(|(id, section)| {
                let section_name = format!("{prefix}tenants.{id}");
                let policy = section.apply(&default, &section_name, (base, source), errors);
                (id, policy)
            })
            .collect();
        PolicySet { default, tenants }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    persistence_repeats: Option<Spanned<u32>>,
    repeat_contacts: Option<Spanned<u32>>,
    repeat_window: Option<Spanned<String>>,
    restraint_after: Option<Spanned<String>>,
    cooldown: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    lexicon_overlay: Option<PathBuf>,
    lexicon_disable: Option<Spanned<Vec<String>>>,
    mask_personal_data: Option<bool>,
    alert_history: Option<usize>,
}

impl PolicySection {
    fn apply(
        self,
        base: &TenantPolicy,
        section: &str,
        (dir, source): (&Path, &Source<'_>),
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
            let at = source.at(disable.span());
            let disable = disable.into_inner();
            if let Some(bad) = disable.iter().find(|id| id.trim().is_empty()) {
                errors.push(format!("{at}{section}.lexicon_disable: empty id {bad:?}"));
            }
            out.lexicon.disable = disable;
        }
        let mut count = |key: &str, value: Option<Spanned<u32>>, slot: &mut u32| {
            if let Some(v) = value {
                let at = source.at(v.span());
                match *v.get_ref() {
                    n if n < 2 => {
                        errors.push(format!("{at}{section}.{key} = {n}: must be at least 2"))
                    }
                    n => *slot = n,
                }
            }
        };
        count("persistence_repeats", self.persistence_repeats, &mut out.persistence_repeats);
        count("repeat_contacts", self.repeat_contacts, &mut out.repeat_contacts);
        let mut duration = |key: &str, value: Option<Spanned<String>>, slot: &mut Duration| {
            if let Some(v) = value {
                let at = source.at(v.span());
                match parse_positive_duration(v.get_ref()) {
                    Ok(d) => *slot = d,
                    Err(e) => errors.push(format!("{at}{section}.{key}: {e}")),
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

/// A TOML text being read, so problems can say `file:line:`.
struct Source<'a> {
    name: Option<&'a Path>,
    text: &'a str,
}

impl Source<'_> {
    /// `file:line: ` for a byte span (`line N: ` without a file name).
    fn at(&self, span: std::ops::Range<usize>) -> String {
        let line = self.text[..span.start.min(self.text.len())].matches('\n').count() + 1;
        match self.name {
            Some(path) => format!("{}:{line}: ", path.display()),
            None => format!("line {line}: "),
        }
    }

    /// Parses one string value; a problem is recorded as `file:line: key: problem`.
    fn value<T>(
        &self,
        value: &Option<Spanned<String>>,
        key: &str,
        errors: &mut Vec<String>,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let value = value.as_ref()?;
        parse(value.get_ref())
            .map_err(|e| errors.push(format!("{}{key}: {e}", self.at(value.span()))))
            .ok()
    }

    /// Deserialises the whole text; a syntax or type error is located like any other problem.
    fn parse<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        toml::from_str(self.text).map_err(|e| {
            let at = e.span().map(|span| self.at(span)).unwrap_or_default();
            format!("{at}{}", e.message().trim_end())
        })
    }
}

/// Parses a duration that must not be zero.
fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err(format!("duration {text:?} must be positive")),
        d => Ok(d),
    }
}

/// Formats a duration the way [`parse_duration`] reads it, in the largest exact unit.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        0 => "0s".to_owned(),
        ms if ms % 3_600_000 == 0 => format!("{}h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{}s", ms / 1000),
        ms => format!("{ms}ms"),
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

    /// Every bad value is reported with its line and key; unknown keys are refused.
    #[test]
    fn policy_errors_name_the_key() {
        let err = PolicySet::parse("[default]\npersistence_repeats = 1\ncooldown = \"soon\"\n")
            .expect_err("invalid");
        assert!(err.contains("line 2: default.persistence_repeats = 1"), "help: {err}");
        assert!(err.contains("line 3: default.cooldown"), "help: {err}");
        let err = PolicySet::parse("[default]\npersistance = 3\n").expect_err("typo");
        assert!(err.contains("line 2") && err.contains("persistance"), "help: {err}");
    }

    /// A config file in a fresh temporary directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let dir = std::env::temp_dir().join(format!("kasuhara-config-{}", std::process::id()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write temp file");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Overrides {
        let map: HashMap<String, String> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Overrides::from_env(|name| map.get(name).cloned()).expect("valid env")
    }

    /// The defaults are valid literals (`Settings::default` relies on it).
    #[test]
    fn defaults_parse() {
        let d = Settings::default();
        assert_eq!(d.addr.to_string(), DEFAULT_ADDR);
        assert_eq!(d.metrics_addr.to_string(), DEFAULT_METRICS_ADDR);
    }

    /// `[redis]` in the file turns scale-out on with its sizes; KASUHARA_REDIS and --redis
    /// replace the URL and keep the file's sizes; a bad URL or size is named with its line;
    /// `config check` output reads back the same.
    #[test]
    fn redis_settings_layer_and_validate() {
        let file = TempFile::new(
            "redis.toml",
            "[redis]\nurl = \"redis://10.0.0.5:6379\"\ntimeout = \"250ms\"\nbuffer = 50\n",
        );
        let flags = Overrides { config: Some(file.0.clone()), ..Overrides::default() };
        let s = Settings::resolve(&Overrides::default(), &flags).expect("valid");
        let redis = s.server.redis.clone().expect("on");
        assert_eq!(redis.url, "redis://10.0.0.5:6379");
        assert_eq!((redis.timeout, redis.buffer), (Duration::from_millis(250), 50));
        assert_eq!(redis.stream_maxlen, DEFAULT_REDIS_STREAM_MAXLEN);
        let again = TempFile::new("redis-again.toml", &s.to_toml());
        let flags_again = Overrides { config: Some(again.0.clone()), ..Overrides::default() };
        let reread = Settings::resolve(&Overrides::default(), &flags_again).expect("reads back");
        assert_eq!(reread.server.redis, s.server.redis);

        let from_env = env(&[("KASUHARA_REDIS", "redis://127.0.0.1:7000")]);
        let s = Settings::resolve(&from_env, &flags).expect("valid");
        let redis = s.server.redis.expect("on");
        assert_eq!((redis.url.as_str(), redis.buffer), ("redis://127.0.0.1:7000", 50));
        assert!(
            Settings::resolve(&Overrides::default(), &Overrides::default())
                .expect("defaults")
                .server
                .redis
                .is_none()
        );

        let bad = Overrides::from_env(|n| (n == "KASUHARA_REDIS").then(|| "http://x".to_owned()));
        assert!(format!("{:?}", bad.err()).contains("KASUHARA_REDIS"));
        let bad_file =
            TempFile::new("redis-bad.toml", "[redis]\nurl = \"localhost\"\nbuffer = 0\n");
        let flags = Overrides { config: Some(bad_file.0.clone()), ..Overrides::default() };
        let message =
            Settings::resolve(&Overrides::default(), &flags).expect_err("bad").to_string();
        let all = format!("{message} {:?}", Settings::resolve(&Overrides::default(), &flags).err());
        assert!(all.contains("redis.url") && all.contains("redis.buffer"), "help: {all}");
    }

    /// Each layer overrides the one before: defaults < file < KASUHARA_* < flags.
    #[test]
    fn precedence_file_env_flag() {
        let file = TempFile::new(
            "precedence.toml",
            "[server]\naddr = \"127.0.0.1:1001\"\nshutdown_grace = \"1s\"\n\
             metrics_addr = \"127.0.0.1:1002\"\n[limits]\nalert_buffer = 10\n\
             [log]\nformat = \"json\"\n",
        );
        let env = env(&[
            ("KASUHARA_CONFIG", file.0.to_str().expect("utf-8 path")),
            ("KASUHARA_ADDR", "127.0.0.1:2001"),
            ("KASUHARA_SHUTDOWN_GRACE", "2s"),
            ("KASUHARA_METRICS_ADDR", "off"),
        ]);
        let flags = Overrides {
            addr: Some("127.0.0.1:3001".parse().expect("addr")),
            ..Overrides::default()
        };
        let s = Settings::resolve(&env, &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.addr.port(), 3001, "help: a flag beats the environment");
        assert_eq!(s.server.shutdown_grace, Duration::from_secs(2), "help: env beats the file");
        assert_eq!(s.metrics_addr, MetricsAddr::Off, "help: env beats the file");
        assert_eq!(s.server.alert_buffer, 10, "help: the file beats the defaults");
        assert_eq!(s.log_format, LogFormat::Json, "help: the file beats the defaults");
        assert_eq!(s.log_filter, DEFAULT_LOG_FILTER, "help: untouched keys keep defaults");
        assert_eq!(s.file.as_deref(), Some(file.0.as_path()));
    }

    /// A --config flag wins over KASUHARA_CONFIG, and --policy replaces the file's [policy].
    #[test]
    fn config_flag_and_policy_file() {
        let from_env = TempFile::new("env.toml", "[limits]\nalert_buffer = 7\n");
        let from_flag = TempFile::new(
            "flag.toml",
            "[limits]\nalert_buffer = 8\n[policy.default]\ncooldown = \"5s\"\n\
             [policy.tenants.acme]\npersistence_repeats = 9\n",
        );
        let env = env(&[("KASUHARA_CONFIG", from_env.0.to_str().expect("utf-8"))]);
        let flags = Overrides { config: Some(from_flag.0.clone()), ..Overrides::default() };
        let s = Settings::resolve(&env, &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.server.alert_buffer, 8);
        assert_eq!(s.server.policy.for_tenant("acme").persistence_repeats, 9);
        assert_eq!(s.server.policy.for_tenant("acme").cooldown, Duration::from_secs(5));

        let policy = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/policy.toml");
        let flags = Overrides { policy: Some(policy), ..flags };
        let s = Settings::resolve(&Overrides::default(), &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.server.policy.for_tenant("acme"), &TenantPolicy::default());
        assert_eq!(s.server.policy.for_tenant("example-bank").persistence_repeats, 3);
    }

    /// Problems in the file are all reported, each as file:line: key.
    #[test]
    fn evidence_log_section() {
        let file = TempFile::new(
            "evidence.toml",
            "[evidence_log]\npath = \"/tmp/evidence.jsonl\"\nfsync = \"2s\"\n",
        );
        let flags = Overrides { config: Some(file.0.clone()), ..Overrides::default() };
        let s = Settings::resolve(&Overrides::default(), &flags).expect("valid");
        let log = s.server.evidence_log.clone().expect("evidence log configured");
        assert_eq!(log.path, PathBuf::from("/tmp/evidence.jsonl"));
        assert_eq!(log.fsync, crate::evidence::FsyncPolicy::Interval(Duration::from_secs(2)));
        assert!(s.to_toml().contains("[evidence_log]"));

        let bad =
            TempFile::new("bad-fsync.toml", "[evidence_log]\npath = \"x\"\nfsync = \"often\"\n");
        let flags = Overrides { config: Some(bad.0.clone()), ..Overrides::default() };
        let err = Settings::resolve(&Overrides::default(), &flags).expect_err("bad").to_string();
        assert!(err.contains(&format!("{}:3: evidence_log.fsync", bad.0.display())), "help: {err}");
    }

    #[test]
    fn file_errors_have_file_and_line() {
        let file = TempFile::new(
            "bad.toml",
            "[server]\naddr = \"localhost\"\nshutdown_grace = \"5 s\"\n\n\
             [policy.tenants.acme]\nrepeat_contacts = 1\n",
        );
        let flags = Overrides { config: Some(file.0.clone()), ..Overrides::default() };
        let err =
            Settings::resolve(&Overrides::default(), &flags).expect_err("invalid").to_string();
        let at = |line: usize| format!("{}:{line}: ", file.0.display());
        assert!(err.contains(&format!("{}server.addr", at(2))), "help: {err}");
        assert!(err.contains(&format!("{}server.shutdown_grace", at(3))), "help: {err}");
        assert!(
            err.contains(&format!("{}policy.tenants.acme.repeat_contacts = 1", at(6))),
            "help: {err}"
        );

        let typo = TempFile::new("typo.toml", "[server]\n\naddress = \"127.0.0.1:1\"\n");
        let flags = Overrides { config: Some(typo.0.clone()), ..Overrides::default() };
        let err = Settings::resolve(&Overrides::default(), &flags).expect_err("typo").to_string();
        assert!(err.contains(&format!("{}:3: ", typo.0.display())), "help: {err}");
        assert!(err.contains("address"), "help: {err}");

        let syntax = TempFile::new("syntax.toml", "[server]\naddr = 127.0.0.1\n");
        let flags = Overrides { config: Some(syntax.0.clone()), ..Overrides::default() };
        let err = Settings::resolve(&Overrides::default(), &flags).expect_err("syntax").to_string();
        assert!(err.contains(&format!("{}:2: ", syntax.0.display())), "help: {err}");
    }

    /// Bad environment values are reported by variable name, all at once.
    #[test]
    fn env_errors_name_the_variable() {
        let map: HashMap<&str, &str> = [
            ("KASUHARA_ADDR", "nowhere"),
            ("KASUHARA_SHUTDOWN_GRACE", "soon"),
            ("KASUHARA_LOG", ""),
        ]
        .into();
        let err = Overrides::from_env(|name| map.get(name).map(|v| v.to_string()))
            .expect_err("invalid")
            .to_string();
        assert!(err.contains("KASUHARA_ADDR=\"nowhere\""), "help: {err}");
        assert!(err.contains("KASUHARA_SHUTDOWN_GRACE=\"soon\""), "help: {err}");
        assert!(!err.contains("KASUHARA_LOG"), "help: empty means unset: {err}");
    }

    /// The metrics endpoint may not share the gRPC address, and OTLP needs the feature.
    #[test]
    fn combinations_are_checked() {
        let flags = Overrides {
            addr: Some("127.0.0.1:5000".parse().expect("addr")),
            metrics_addr: Some(MetricsAddr::At("127.0.0.1:5000".parse().expect("addr"))),
            ..Overrides::default()
        };
        let err = Settings::resolve(&Overrides::default(), &flags).expect_err("clash").to_string();
        assert!(err.contains("metrics_addr 127.0.0.1:5000"), "help: {err}");
        let flags = Overrides {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            ..Overrides::default()
        };
        let resolved = Settings::resolve(&Overrides::default(), &flags);
        assert_eq!(resolved.is_ok(), cfg!(feature = "otlp"), "help: {resolved:?}");
    }

    /// The shipped sample config is valid, and what `config check` prints reads back to the
    /// same settings.
    #[test]
    fn example_config_round_trips() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kasuhara-guard.toml");
        let flags = Overrides { config: Some(example), ..Overrides::default() };
        let s = Settings::resolve(&Overrides::default(), &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.server.policy.for_tenant("example-bank").persistence_repeats, 3);
        let printed = TempFile::new("printed.toml", &s.to_toml());
        let flags = Overrides { config: Some(printed.0.clone()), ..Overrides::default() };
        let again =
            Settings::resolve(&Overrides::default(), &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again, Settings { file: Some(printed.0.clone()), ..s });
    }

    /// The exposed sample turns authentication on from its tokens file, reads back the same
    /// through `config check`'s output, and a bad [auth], [tls] or [limits] value is named.
    #[test]
    fn auth_tls_and_limits_keys() {
        let example =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/kasuhara-guard-exposed.toml");
        let flags = Overrides { config: Some(example), ..Overrides::default() };
        let s = Settings::resolve(&Overrides::default(), &flags).unwrap_or_else(|e| panic!("{e}"));
        assert!(s.server.access.is_on(), "help: [auth] tokens_file turns authentication on");
        assert!(!s.addr.ip().is_loopback());
        assert_eq!(s.server.limits.max_message_bytes, 65536);
        let printed = TempFile::new("printed-exposed.toml", &s.to_toml());
        let flags = Overrides { config: Some(printed.0.clone()), ..Overrides::default() };
        let again =
            Settings::resolve(&Overrides::default(), &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.server, s.server, "help: printed [auth] and [limits] read back");

        let bad = TempFile::new(
            "bad-auth.toml",
            "[limits]\nmax_subscribers_per_tenant = 0\n[auth]\ntokens_file = \"/nonexistent/t\"\n\
             [tls]\ncert = \"/nonexistent/c\"\nkey = \"/nonexistent/k\"\n",
        );
        let flags = Overrides { config: Some(bad.0.clone()), ..Overrides::default() };
        let err = Settings::resolve(&Overrides::default(), &flags).expect_err("bad").to_string();
        for key in ["limits.max_subscribers_per_tenant", "auth.tokens_file", "tls.cert"] {
            assert!(err.contains(key), "help: {key} is named: {err}");
        }
    }

    /// The scale-out example (deploy/) is a config a node starts with: its container paths
    /// point at the repository's files here, and it turns on Redis and authentication, so its
    /// all-interfaces listeners pass the exposure check that `serve` applies.
    #[test]
    fn deploy_config_starts_a_node() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(root.join("deploy/kasuhara-guard.toml"))
            .expect("deploy config");
        let at_repo = text
            .replace(
                "/etc/kasuhara-guard/tokens.toml",
                &root.join("deploy/tokens.toml").display().to_string(),
            )
            .replace(
                "/opt/kasuhara-guard/dictionaries",
                &root.join("dictionaries").display().to_string(),
            );
        assert_ne!(at_repo, text, "help: the container paths are in the file");
        let file = TempFile::new("deploy.toml", &at_repo);
        let flags = Overrides { config: Some(file.0.clone()), ..Overrides::default() };
        let s = Settings::resolve(&Overrides::default(), &flags).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.server.redis.as_ref().map(|r| r.url.as_str()), Some("redis://redis:6379"));
        let MetricsAddr::At(metrics) = s.metrics_addr else { panic!("metrics on") };
        assert!(!s.addr.ip().is_loopback() && !metrics.ip().is_loopback());
        crate::auth::check_exposure(&s.server.access, &[s.addr])
            .unwrap_or_else(|e| panic!("help: the deploy example would exit 64: {e}"));
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

    /// Durations print in the largest exact unit and parse back.
    #[test]
    fn durations_round_trip() {
        for (d, text) in [(1500, "1500ms"), (2000, "2s"), (120_000, "2m"), (86_400_000, "24h")] {
            let d = Duration::from_millis(d);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }
}
