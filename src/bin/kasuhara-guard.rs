//! The `kasuhara-guard` command: `serve`, `screen`, `lexicon check`, `eval`, `config check`,
//! `health`, `loadgen`. A thin shell over the library: resolve settings, set up telemetry, call in.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tokio::net::TcpListener;

use kasuhara_guard::config::{self, Config, LogFormat, MetricsAddr, Overrides, Settings};
use kasuhara_guard::conversation::check_text;
use kasuhara_guard::evidence::{self, EvidenceLogConfig, FsyncPolicy};
use kasuhara_guard::pipeline::Detection;
use kasuhara_guard::{client, eval, loadgen, server, shutdown, telemetry};
use tokio_util::sync::CancellationToken;

/// Real-time screening of contact-centre transcripts for customer harassment (カスハラ).
///
/// Settings come from defaults, then the config file, then KASUHARA_* variables, then flags.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Config file (TOML; see examples/kasuhara-guard.toml) [env: KASUHARA_CONFIG].
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log format on stderr [env: KASUHARA_LOG_FORMAT] [default: text].
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    /// Log filter, e.g. info or warn,kasuhara_guard=debug [env: KASUHARA_LOG] [default: info].
    #[arg(long, global = true, value_name = "FILTER")]
    log_filter: Option<String>,
    /// Export traces to this OTLP/gRPC collector, e.g. http://127.0.0.1:4317 (builds with
    /// --features otlp) [env: KASUHARA_OTLP_ENDPOINT].
    #[arg(long, global = true, value_name = "URL")]
    otlp_endpoint: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Default, clap::Args)]
struct LexiconArgs {
    /// Directory of lexicon files (*.tsv) [env: KASUHARA_LEXICON_DIR] [default: dictionaries].
    #[arg(long, value_name = "DIR")]
    lexicon_dir: Option<PathBuf>,
    /// Tenant policy file (TOML; see examples/policy.toml); replaces the config file's
    /// [policy] [env: KASUHARA_POLICY].
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

#[derive(Debug, Default, clap::Args)]
struct ServeArgs {
    /// Address to listen on [env: KASUHARA_ADDR] [default: 127.0.0.1:50051].
    #[arg(long)]
    addr: Option<SocketAddr>,
    /// Prometheus endpoint address, or "off" [env: KASUHARA_METRICS_ADDR]
    /// [default: 127.0.0.1:9464].
    #[arg(long, value_name = "ADDR|off")]
    metrics_addr: Option<MetricsAddr>,
    /// Grace period for open streams at shutdown (e.g. 500ms, 5s, 1m)
    /// [env: KASUHARA_SHUTDOWN_GRACE] [default: 5s].
    #[arg(long, value_parser = config::parse_duration)]
    shutdown_grace: Option<Duration>,
    /// Alerts a supervisor stream may fall behind before it skips ahead
    /// [env: KASUHARA_ALERT_BUFFER] [default: 4096].
    #[arg(long)]
    alert_buffer: Option<usize>,
    /// Share alerts and call state with other nodes through this Redis, e.g.
    /// redis://127.0.0.1:6379 (see docs/scale-out.md) [env: KASUHARA_REDIS]; one node in
    /// memory when absent.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Serve the supervisor console (web page) on this address; off when absent. It takes
    /// the same supervisor tokens as gRPC; it speaks plain HTTP, so off loopback put it behind
    /// a TLS-terminating proxy.
    #[arg(long, env = "KASUHARA_CONSOLE_ADDR")]
    console_addr: Option<SocketAddr>,
    /// Silence after which a supervisor stream gets a heartbeat (e.g. 15s).
    #[arg(long, env = "KASUHARA_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = config::parse_duration)]
    heartbeat_interval: Duration,
    /// Append alerts and acknowledgements to this hash-chained evidence log (JSON Lines);
    /// off when absent. Check it with `audit verify`.
    #[arg(long, env = "KASUHARA_EVIDENCE_LOG", value_name = "FILE")]
    evidence_log: Option<PathBuf>,
    /// When the evidence log is forced to disk: always, never, or an interval like 1s
    /// [default: always].
    #[arg(long, env = "KASUHARA_EVIDENCE_FSYNC", value_name = "POLICY")]
    evidence_fsync: Option<FsyncPolicy>,
    #[command(flatten)]
    lexicon: LexiconArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC service (and the Prometheus endpoint).
    Serve(ServeArgs),
    /// Screen JSON Lines ({"text": ..., "speaker": "customer"|"agent", "id": ...}) from a
    /// file or stdin; print one verdict line per input line.
    Screen {
        /// Input file; stdin when absent or "-".
        input: Option<PathBuf>,
        #[command(flatten)]
        lexicon: LexiconArgs,
    },
    /// Lexicon tools for authors.
    Lexicon {
        #[command(subcommand)]
        command: LexiconCommand,
    },
    /// Score a labelled corpus (../shared/eval schema) through the gRPC API.
    Eval {
        /// Directory holding utterances.jsonl and/or conversations.jsonl.
        #[arg(long)]
        corpus: PathBuf,
        /// Screen against a running server (e.g. http://127.0.0.1:50051) instead of starting
        /// one in this process.
        #[arg(long)]
        addr: Option<String>,
        #[command(flatten)]
        lexicon: LexiconArgs,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Ask a running server's gRPC health service whether it is serving; exit 0 if so, 1 if
    /// not (for container health checks and probes).
    Health {
        /// The server, e.g. http://127.0.0.1:50051 [default: the configured address, with
        /// 0.0.0.0 read as 127.0.0.1].
        #[arg(long, value_name = "URL")]
        addr: Option<String>,
        /// The service to ask about, e.g. kasuhara.v1.ScreeningService; the whole server
        /// when absent.
        #[arg(long, default_value = "")]
        service: String,
        /// Give up after this long (e.g. 3s).
        #[arg(long, default_value = "3s", value_parser = config::parse_duration)]
        timeout: Duration,
    },
    /// Load a server (or several nodes sharing Redis) with concurrent conversations and a
    /// supervisor; report throughput, verdict, alert and cross-node alert latency, errors,
    /// and the servers' CPU and RSS.
    Loadgen(LoadgenArgs),
    /// Bearer tokens for the tokens file ([auth] tokens_file).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Ask a running server to reload its lexicons and policy file (as SIGHUP does); print
    /// what it loaded and how long it took, or every problem with file:line (exit 1).
    Reload {
        /// The server, e.g. http://127.0.0.1:50051 [default: the configured address].
        #[arg(long, value_name = "URL")]
        addr: Option<String>,
        /// An admin bearer token, when the server has authentication on.
        #[arg(long, env = "KASUHARA_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Evidence log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a random token: prints the token (hand it to the client; it is not stored) and
    /// the [[token]] entry with its SHA-256 to append to the tokens file.
    New {
        /// A name for the token in logs and the tokens file, e.g. bank-ivr-2026.
        #[arg(long)]
        name: String,
        /// producer (Screen, ScreenText), supervisor (Subscribe, Acknowledge, EntryStats,
        /// console) or admin (everything).
        #[arg(long)]
        role: kasuhara_guard::auth::Role,
        /// A tenant the token acts for; repeat for several, "*" for every tenant.
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check an evidence log's hash chain: exit 0 and print the record count and last hash
    /// when intact, exit 1 naming the first bad record (line and why) when not.
    Verify {
        /// The evidence log (JSON Lines).
        file: PathBuf,
    },
    /// Write an incident report (Markdown) for one conversation: timeline, quoted evidence
    /// with its policy items, acknowledgements, and the chain check result.
    Export {
        /// The conversation id.
        #[arg(long)]
        conversation: String,
        /// Write the report here instead of stdout.
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// The evidence log (JSON Lines).
        file: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
struct LoadgenArgs {
    /// The server (HOST:PORT or http://HOST:PORT); repeat for several nodes sharing Redis,
    /// over which the conversations are spread round-robin. Ignored with --spawn.
    #[arg(long = "addr", value_name = "HOST:PORT|URL", default_value = config::DEFAULT_ADDR)]
    addrs: Vec<String>,
    /// Subscribe on this server instead of the first --addr: alerts of conversations on the
    /// other nodes are then cross-node, reported apart (docs/scale-out.md).
    #[arg(long, value_name = "HOST:PORT|URL")]
    subscribe_addr: Option<String>,
    /// Start `kasuhara-guard serve` on a free loopback port and load it (reports start-up
    /// time and the server's CPU and RSS); one node only, so not with several --addr.
    #[arg(long)]
    spawn: bool,
    /// A server's pid, for CPU and RSS, when it runs on this machine; repeat for several
    /// nodes (the report's `server` sums them, `servers` lists each).
    #[arg(long = "server-pid", value_name = "PID")]
    server_pids: Vec<u32>,
    /// Concurrent conversations.
    #[arg(long, default_value_t = 100)]
    conversations: usize,
    /// Total segments per second in paced mode [default: 3.5 per conversation].
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of load (or of holding idle streams).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// paced: fixed rate; saturation: closed loop; idle: open and hold.
    #[arg(long, value_enum, default_value_t = loadgen::Mode::Paced)]
    mode: loadgen::Mode,
    /// Utterances to speak: JSON Lines with "text", or plain lines.
    #[arg(long, default_value = "../shared/eval/dev/utterances.jsonl")]
    corpus: PathBuf,
    /// Lexicon directory of the --spawn server.
    #[arg(long, env = "KASUHARA_LEXICON_DIR", default_value = config::DEFAULT_LEXICON_DIR)]
    lexicon_dir: PathBuf,
    /// Print the report as one JSON line (the last line of stdout).
    #[arg(long)]
    json: bool,
    /// Bearer token for the Screen streams when the server has authentication on: a producer
    /// or admin token for the tenant "loadgen".
    #[arg(long, env = "KASUHARA_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Bearer token for the subscription (a supervisor or admin token for "loadgen")
    /// [default: --token].
    #[arg(long, env = "KASUHARA_SUBSCRIBE_TOKEN", hide_env_values = true)]
    subscribe_token: Option<String>,
}

#[derive(Debug, Subcommand)]
enum LexiconCommand {
    /// Validate every lexicon file (file:line errors), report entries of one category that
    /// share a phrase but disagree on severity, and explain sample texts.
    Check {
        #[command(flatten)]
        lexicon: LexiconArgs,
        /// A sentence or entry pattern to explain: its normalised form, its words (surface,
        /// base form, reading, part of speech), what it hits and what context rules silence.
        #[arg(long = "explain", value_name = "TEXT")]
        explain: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file with the environment and flags on top, load the lexicon and
    /// policy it names, and print the effective configuration as TOML.
    Check {
        /// The config file (overrides --config and KASUHARA_CONFIG).
        file: Option<PathBuf>,
        #[command(flatten)]
        serve: ServeArgs,
    },
}

impl Cli {
    /// The settings given on the command line, for [`Settings::resolve`].
    fn overrides(&self) -> Overrides {
        let mut flags = Overrides {
            config: self.config.clone(),
            log_format: self.log_format,
            log_filter: self.log_filter.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            ..Overrides::default()
        };
        let lexicon = match &self.command {
            Command::Serve(serve)
            | Command::Config { command: ConfigCommand::Check { serve, .. } } => {
                flags.addr = serve.addr;
                flags.metrics_addr = serve.metrics_addr;
                flags.shutdown_grace = serve.shutdown_grace;
                flags.alert_buffer = serve.alert_buffer;
                flags.redis = serve.redis.clone();
                &serve.lexicon
            }
            Command::Screen { lexicon, .. }
            | Command::Eval { lexicon, .. }
            | Command::Lexicon { command: LexiconCommand::Check { lexicon, .. } } => lexicon,
            Command::Health { .. }
            | Command::Loadgen(_)
            | Command::Token { .. }
            | Command::Audit { .. }
            | Command::Reload { .. } => &LexiconArgs::default(),
        };
        if let Command::Config { command: ConfigCommand::Check { file: Some(file), .. } } =
            &self.command
        {
            flags.config = Some(file.clone());
        }
        flags.lexicon_dir = lexicon.lexicon_dir.clone();
        flags.policy = lexicon.policy.clone();
        flags
    }
}

/// Exit status for bad configuration (sysexits EX_USAGE, as linkerd uses).
const EXIT_CONFIG: u8 = 64;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = Overrides::from_env(|name| std::env::var(name).ok())
        .and_then(|env| Settings::resolve(&env, &cli.overrides()));
    let settings = match settings {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let _tracing = telemetry::init_tracing(
            settings.log_format,
            &settings.log_filter,
            settings.otlp_endpoint.as_deref(),
        )?;
        dispatch(cli.command, settings).await
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, mut settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(mut args) => {
            apply_serve_only_flags(&mut args, &mut settings);
            serve(settings, args.console_addr, args.heartbeat_interval).await
        }
        Command::Audit { command: AuditCommand::Verify { file } } => audit_verify(&file),
        Command::Audit { command: AuditCommand::Export { conversation, output, file } } => {
            audit_export(&file, &conversation, output.as_deref())
        }
        Command::Screen { input, .. } => screen(input, settings.server),
        Command::Lexicon { command: LexiconCommand::Check { explain, .. } } => {
            lexicon_check(settings.server, &explain)
        }
        Command::Eval { corpus, addr, json, .. } => {
            run_eval(corpus, addr, settings.server, json).await
        }
        Command::Config { command: ConfigCommand::Check { .. } } => config_check(&settings),
        Command::Health { addr, service, timeout } => {
            health(&addr.unwrap_or_else(|| local_endpoint(&settings)), service, timeout).await
        }
        Command::Reload { addr, token } => {
            reload(&addr.unwrap_or_else(|| local_endpoint(&settings)), token.as_deref()).await
        }
        Command::Loadgen(args) => run_loadgen(args).await,
        Command::Token { command: TokenCommand::New { name, role, tenants } } => {
            token_new(&name, role, &tenants)
        }
    }
}

/// `token new`: the token on stdout's first line, then the entry to append, as TOML comments
/// and a `[[token]]` table, so `>> tokens.toml` after removing the first line just works.
fn token_new(
    name: &str,
    role: kasuhara_guard::auth::Role,
    tenants: &[String],
) -> anyhow::Result<ExitCode> {
    use kasuhara_guard::auth;
    anyhow::ensure!(tenants.iter().all(|t| !t.is_empty()), "--tenant must not be empty");
    let token = auth::mint_token().map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
    println!("{token}");
    println!("# ^ the token: give it to the client (authorization: Bearer <token>); it is");
    println!("#   not stored anywhere. Append the entry below to the tokens file:");
    print!("{}", auth::token_entry_toml(name, &token, role, tenants));
    Ok(ExitCode::SUCCESS)
}

/// `serve`: the gRPC service until SIGTERM/SIGINT (reloading the lexicons and policy on
/// SIGHUP), the metrics endpoint beside it, and the supervisor console when asked for.
async fn serve(
    mut settings: Settings,
    console_addr: Option<SocketAddr>,
    heartbeat_interval: Duration,
) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(!heartbeat_interval.is_zero(), "--heartbeat-interval must be positive");
    settings.server.heartbeat_interval = heartbeat_interval;
    settings.server.reload_on_sighup = true;
    let listener = TcpListener::bind(settings.addr)
        .await
        .with_context(|| format!("cannot listen on {}", settings.addr))?;
    let console = match console_addr {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} for the console"))?,
        ),
        None => None,
    };
    let stop_metrics = CancellationToken::new();
    if let MetricsAddr::At(addr) = settings.metrics_addr {
        let metrics = TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for metrics on {addr}"))?;
        let handle = telemetry::metrics_handle()?;
        tokio::spawn(telemetry::serve_metrics(metrics, handle, stop_metrics.clone()));
    }
    let served =
        server::run_with_console(listener, console, settings.server, shutdown::signal()).await;
    stop_metrics.cancel();
    match served {
        // Exposure without authentication is a configuration problem, reported like one.
        Err(server::ServerError::Exposed(error)) => {
            eprintln!("error: {error}");
            Ok(ExitCode::from(EXIT_CONFIG))
        }
        served => served.map(|()| ExitCode::SUCCESS).map_err(Into::into),
    }
}

/// The serve flags that only `serve` reads: the evidence log, over the config file's
/// `[evidence_log]`.
fn apply_serve_only_flags(args: &mut ServeArgs, settings: &mut Settings) {
    let from_file = settings.server.evidence_log.take();
    let fsync = args.evidence_fsync.or(from_file.as_ref().map(|c| c.fsync)).unwrap_or_default();
    let path = args.evidence_log.take().or(from_file.map(|c| c.path));
    settings.server.evidence_log = path.map(|path| EvidenceLogConfig { path, fsync });
}

/// `audit verify`: 0 when the chain is intact, 1 naming the first bad record.
fn audit_verify(file: &Path) -> anyhow::Result<ExitCode> {
    match evidence::verify_file(file) {
        Ok(verified) => {
            println!(
                "ok: {}: {} records, chain intact; last hash {}",
                file.display(),
                verified.records,
                verified.last_hash
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(broken) => {
            println!("BROKEN: {}: {broken}", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `audit export`: the incident report for one conversation, on stdout or to a file.
fn audit_export(
    file: &Path,
    conversation: &str,
    output: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let report = evidence::export(&text, &file.display().to_string(), conversation);
    match output {
        Some(path) => std::fs::write(path, report)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{report}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `config check`: the settings resolved (errors already reported by `main`), the lexicon
/// loaded as `serve` would, then the effective configuration printed.
fn config_check(settings: &Settings) -> anyhow::Result<ExitCode> {
    let pipeline = server::load_pipeline(&settings.server)?;
    let source = match &settings.file {
        Some(path) => format!("{}", path.display()),
        None => "no config file".to_owned(),
    };
    println!(
        "# ok: {source}; lexicon {} ({} entries); {} tenant polic{}",
        settings.server.lexicon_dir.display(),
        pipeline.matcher().entries().len(),
        settings.server.policy.tenants.len(),
        if settings.server.policy.tenants.len() == 1 { "y" } else { "ies" },
    );
    println!("# effective configuration (defaults < file < KASUHARA_* < flags):\n");
    print!("{}", settings.to_toml());
    Ok(ExitCode::SUCCESS)
}

/// `health`: one `grpc.health.v1.Health/Check` call.
/// The configured address as a URL, with 0.0.0.0 read as 127.0.0.1.
fn local_endpoint(settings: &Settings) -> String {
    let mut local = settings.addr;
    if local.ip().is_unspecified() {
        local.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    format!("http://{local}")
}

/// `reload`: `AdminService.ReloadLexicons` on a running server.
async fn reload(endpoint: &str, token: Option<&str>) -> anyhow::Result<ExitCode> {
    use kasuhara_guard::pb::{ReloadLexiconsRequest, admin_service_client::AdminServiceClient};
    use tonic_types::StatusExt;

    let mut client = AdminServiceClient::connect(endpoint.to_owned())
        .await
        .with_context(|| format!("cannot connect to {endpoint}"))?;
    let mut request = tonic::Request::new(ReloadLexiconsRequest {});
    if let Some(token) = token {
        let value = kasuhara_guard::auth::bearer_header(token)
            .context("the token is not a header value")?;
        request.metadata_mut().insert("authorization", value);
    }
    match client.reload_lexicons(request).await {
        Ok(response) => {
            let r = response.into_inner();
            let elapsed = r.elapsed.map_or(0.0, |d| d.seconds as f64 + f64::from(d.nanos) / 1e9);
            println!(
                "reloaded (generation {}): {} entries, {} context rules, {} patterns, {} tenant \
                 pipelines, {} tenant policies in {:.3} s",
                r.generation,
                r.entries,
                r.context_rules,
                r.patterns,
                r.tenant_pipelines,
                r.tenant_policies,
                elapsed
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(status) if status.code() == tonic::Code::FailedPrecondition => {
            eprintln!("reload refused; the server keeps its rules:");
            let details = status.get_error_details();
            for v in
                details.precondition_failure().map(|p| p.violations.as_slice()).unwrap_or_default()
            {
                eprintln!("  {} {}: {}", v.r#type, v.subject, v.description);
            }
            Ok(ExitCode::FAILURE)
        }
        Err(status) => Err(status).with_context(|| format!("reload on {endpoint} failed")),
    }
}

async fn health(endpoint: &str, service: String, timeout: Duration) -> anyhow::Result<ExitCode> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let check = async {
        let channel = tonic::transport::Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(timeout)
            .connect()
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))?;
        let response = HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest { service: service.clone() })
            .await?;
        anyhow::Ok(response.into_inner().status())
    };
    let status = tokio::time::timeout(timeout, check)
        .await
        .with_context(|| format!("no answer from {endpoint} within {timeout:?}"))??;
    let name = if service.is_empty() { "server" } else { service.as_str() };
    println!("{name}: {}", status.as_str_name());
    Ok(if status == ServingStatus::Serving { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `screen`: JSON Lines in, one verdict per line out. A bad line gets an error line of its own
/// and the rest are still screened; the exit status says whether any line failed.
fn screen(input: Option<PathBuf>, config: Config) -> anyhow::Result<ExitCode> {
    let pipelines = server::load_pipelines(&config)?;
    let reader: Box<dyn BufRead> = match input {
        Some(path) if path.as_os_str() != "-" => Box::new(std::io::BufReader::new(
            std::fs::File::open(&path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        )),
        _ => Box::new(std::io::stdin().lock()),
    };
    let mut out = std::io::stdout().lock();
    let mut failed = 0usize;
    for (index, line) in reader.lines().enumerate() {
        let line = line.context("cannot read input")?;
        if line.trim().is_empty() {
            continue;
        }
        let verdict = match screen_line(&pipelines, &line) {
            Ok(v) => v,
            Err(message) => {
                failed += 1;
                json!({"line": index + 1, "error": message})
            }
        };
        writeln!(out, "{verdict}")?;
    }
    if failed > 0 {
        eprintln!("error: {failed} input line(s) could not be screened");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn screen_line(
    pipelines: &kasuhara_guard::pipeline::Pipelines,
    line: &str,
) -> Result<serde_json::Value, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let tenant = value.get("tenant_id").and_then(|t| t.as_str()).unwrap_or("");
    let pipeline = pipelines.for_tenant(tenant);
    let text = value.get("text").and_then(|t| t.as_str()).ok_or("missing string field \"text\"")?;
    let speaker = value.get("speaker").and_then(|s| s.as_str()).unwrap_or("customer");
    check_text("text", text).map_err(|e| e.to_string())?;
    let detections = match speaker {
        "customer" => pipeline.screen(text).map_err(|e| e.to_string())?,
        "agent" => Vec::new(),
        other => return Err(format!("unknown speaker {other:?} (expected customer or agent)")),
    };
    let mut verdict = json!({"alerts": detections.iter().map(detection_json).collect::<Vec<_>>()});
    if let Some(id) = value.get("id") {
        verdict["id"] = id.clone();
    }
    Ok(verdict)
}

fn detection_json(d: &Detection) -> serde_json::Value {
    json!({
        "category": d.category.code(),
        "severity": d.severity.code(),
        "policy_item": d.category.policy_item(),
        "recommended_action": d.severity.recommended_action(),
        "evidence": d.evidence.iter().map(|e| json!({
            "quote": e.quote, "start": e.start, "end": e.end,
            "normalized": e.normalized, "entry_id": e.entry_id, "reason": e.reason,
        })).collect::<Vec<_>>(),
    })
}

/// `lexicon check`: loads and compiles the lexicon exactly as `serve` does, then reports
/// conflicts and explains the given texts.
fn lexicon_check(config: Config, explain: &[String]) -> anyhow::Result<ExitCode> {
    use std::collections::BTreeMap;

    let pipeline = server::load_pipeline(&config)?;
    let matcher = pipeline.matcher();
    let entries = matcher.entries();
    println!(
        "ok: {} entries, {} context rules, {} automaton patterns",
        entries.len(),
        matcher.lexicon().rules.len(),
        matcher.pattern_count()
    );
    let mut per_category: BTreeMap<&str, usize> = BTreeMap::new();
    for e in entries {
        *per_category.entry(e.category.code()).or_default() += 1;
    }
    for (code, n) in per_category {
        println!("  {code:<22} {n}");
    }
    // The same phrase in two entries of one category with different severities: one of them
    // is wrong. (The same phrase in two categories is deliberate: a slur is both ATTACK and
    // DISCRIMINATION_SEXUAL.)
    let mut by_phrase: BTreeMap<&str, Vec<&kasuhara_guard::dictionary::Entry>> = BTreeMap::new();
    for e in entries.iter().filter(|e| e.pattern.pieces.len() == 1) {
        for alternative in &e.pattern.pieces[0] {
            by_phrase.entry(alternative.as_str()).or_default().push(e);
        }
    }
    let (mut conflicts, mut duplicates) = (0, 0);
    for (phrase, owners) in &by_phrase {
        let first = owners[0];
        let describe = || {
            let list: Vec<String> = owners
                .iter()
                .map(|o| format!("{} {}@{} ({})", o.id, o.category, o.severity, o.origin))
                .collect();
            list.join(", ")
        };
        let same_category = || owners.iter().skip(1).filter(|o| o.category == first.category);
        if same_category().any(|o| o.severity != first.severity) {
            conflicts += 1;
            println!("conflict: {phrase:?} is in {}", describe());
        } else if same_category().next().is_some() {
            // Harmless (the hits are grouped), but one of the two is redundant.
            duplicates += 1;
            println!("duplicate: {phrase:?} is in {}", describe());
        }
    }
    println!("{conflicts} conflicting phrase(s), {duplicates} duplicate phrase(s)");
    let segmenter = matcher.segmenter();
    for text in explain {
        let normalized = pipeline.prepare(text)?;
        println!("\n{text:?}\n  normalised: {:?}", normalized.as_str());
        let mut words = Vec::new();
        segmenter.for_each_word(normalized.as_str(), |w| {
            words.push(format!("{}[{}|{}|{}]", w.surface, w.base_form, w.reading, w.part_of_speech))
        })?;
        println!("  words: {}", words.join(" "));
        let findings = matcher.find(normalized.as_str())?;
        for hit in &findings.hits {
            let e = &entries[hit.entry];
            println!(
                "  hit: {} {}@{} on {:?}{}",
                e.id,
                e.category,
                hit.severity,
                &normalized.as_str()[hit.bytes.clone()],
                hit.raised_by.as_ref().map(|r| format!(" (raised by {r})")).unwrap_or_default()
            );
        }
        for (entry, bytes, rule) in &findings.silenced {
            println!(
                "  silenced: {} on {:?} by {rule}",
                entries[*entry].id,
                &normalized.as_str()[bytes.clone()]
            );
        }
        if findings.hits.is_empty() && findings.silenced.is_empty() {
            println!("  no entry matches");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `eval`: replays the corpus through gRPC (an in-process server unless `--addr`), scores it.
async fn run_eval(
    corpus_dir: PathBuf,
    addr: Option<String>,
    config: Config,
    json_output: bool,
) -> anyhow::Result<ExitCode> {
    let corpus = eval::load_corpus(&corpus_dir)?;
    let (endpoint, local) = match addr {
        Some(addr) => (addr, None),
        None => {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            let local_addr = listener.local_addr()?;
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let handle = tokio::spawn(server::run(listener, config, async {
                let _ = stopped.await;
            }));
            (format!("http://{local_addr}"), Some((stop, handle)))
        }
    };
    let replay = async {
        let mut client = client::connect(&endpoint).await?;
        let utterances = client::replay_utterances(&mut client, &corpus, "eval").await?;
        let conversations = client::replay_conversations(&mut client, &corpus, "eval").await?;
        Ok::<_, client::ReplayError>((utterances, conversations))
    };
    let replayed = replay.await;
    let (utterances, conversations) = match (replayed, local) {
        (Ok(outcomes), Some((stop, handle))) => {
            let _ = stop.send(());
            handle.await??;
            outcomes
        }
        (Ok(outcomes), None) => outcomes,
        // When the in-process server failed (a broken lexicon, say), its error is the one
        // worth showing, not the transport error the client saw.
        (Err(e), Some((_, handle))) => {
            if let Ok(Ok(Err(server_error))) =
                tokio::time::timeout(Duration::from_secs(5), handle).await
            {
                return Err(server_error.into());
            }
            return Err(e.into());
        }
        (Err(e), _) => return Err(e.into()),
    };
    let report = eval::score(&corpus, &utterances, &conversations);
    if json_output {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `loadgen`: runs one load and prints the report (the JSON object last, with `--json`).
async fn run_loadgen(args: LoadgenArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        !(args.spawn && args.addrs.len() > 1),
        "--spawn starts one server and loads it alone: it cannot be combined with several \
         --addr ({} given); start the nodes yourself (scripts/scaleout-load.sh does)",
        args.addrs.len()
    );
    let corpus = loadgen::load_corpus(&args.corpus)?;
    let spawned = match args.spawn {
        true => {
            let exe = std::env::current_exe().context("cannot find this executable")?;
            Some(loadgen::spawn_server(&exe, &args.lexicon_dir).await?)
        }
        false => None,
    };
    let url = |addr: String| if addr.contains("://") { addr } else { format!("http://{addr}") };
    let endpoints = match &spawned {
        Some(server) => vec![server.endpoint.clone()],
        None => args.addrs.into_iter().map(url).collect(),
    };
    let config = loadgen::LoadConfig {
        endpoints,
        subscribe_endpoint: args.subscribe_addr.map(url),
        conversations: args.conversations,
        rate: args
            .rate
            .unwrap_or(args.conversations as f64 * loadgen::DEFAULT_SEGMENTS_PER_CONVERSATION),
        duration: Duration::from_secs_f64(args.duration),
        mode: args.mode,
        corpus: std::sync::Arc::new(corpus),
        server_pids: match &spawned {
            Some(server) => vec![server.pid],
            None => args.server_pids,
        },
        progress: true,
        token: args.token,
        subscribe_token: args.subscribe_token,
    };
    let report = loadgen::run(config).await?;
    let mut value = serde_json::to_value(&report)?;
    if let Some(server) = &spawned {
        value["server_startup_ms"] = json!(server.startup.as_secs_f64() * 1000.0);
    }
    if args.json {
        println!("{value}");
    } else {
        println!("{}", serde_json::to_string_pretty(&value)?);
    }
    Ok(if report.errors > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
