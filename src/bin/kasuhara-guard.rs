//! The `kasuhara-guard` command: `serve`, `screen`, `eval`. A thin shell over the library:
//! parse flags, set up logging, call in.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::json;
use tokio::net::TcpListener;

use kasuhara_guard::config::{self, Config};
use kasuhara_guard::conversation::check_text;
use kasuhara_guard::pipeline::Detection;
use kasuhara_guard::{client, eval, server, shutdown};

/// Real-time screening of contact-centre transcripts for customer harassment (カスハラ).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "KASUHARA_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct LexiconArgs {
    /// Directory of lexicon files (*.tsv).
    #[arg(long, env = "KASUHARA_LEXICON_DIR", default_value = config::DEFAULT_LEXICON_DIR)]
    lexicon_dir: PathBuf,
    /// Tenant policy file (TOML; see examples/policy.toml); the policy's defaults when absent.
    #[arg(long, env = "KASUHARA_POLICY")]
    policy: Option<PathBuf>,
}

impl LexiconArgs {
    /// The server configuration these flags describe.
    fn config(self) -> anyhow::Result<Config> {
        let policy = match &self.policy {
            Some(path) => config::PolicySet::load(path)?,
            None => config::PolicySet::default(),
        };
        Ok(Config { lexicon_dir: self.lexicon_dir, policy, ..Config::default() })
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gRPC service.
    Serve {
        /// Address to listen on.
        #[arg(long, env = "KASUHARA_ADDR", default_value = config::DEFAULT_ADDR)]
        addr: SocketAddr,
        #[command(flatten)]
        lexicon: LexiconArgs,
        /// Grace period for open streams at shutdown (e.g. 500ms, 5s, 1m).
        #[arg(long, env = "KASUHARA_SHUTDOWN_GRACE", default_value = "5s", value_parser = config::parse_duration)]
        shutdown_grace: Duration,
        /// Serve the supervisor console (web page) on this address; off when absent. It has
        /// no authentication of its own: keep it on loopback or behind an authenticating proxy.
        #[arg(long, env = "KASUHARA_CONSOLE_ADDR")]
        console_addr: Option<SocketAddr>,
        /// Silence after which a supervisor stream gets a heartbeat (e.g. 15s).
        #[arg(long, env = "KASUHARA_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = config::parse_duration)]
        heartbeat_interval: Duration,
    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KASUHARA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve { addr, lexicon, shutdown_grace, console_addr, heartbeat_interval } => {
            anyhow::ensure!(!heartbeat_interval.is_zero(), "--heartbeat-interval must be positive");
            let config = Config { shutdown_grace, heartbeat_interval, ..lexicon.config()? };
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            let console = match console_addr {
                Some(addr) => Some(
                    TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr} for the console"))?,
                ),
                None => None,
            };
            server::run_with_console(listener, console, config, shutdown::signal()).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Screen { input, lexicon } => screen(input, lexicon.config()?),
        Command::Lexicon { command: LexiconCommand::Check { lexicon, explain } } => {
            lexicon_check(lexicon.config()?, &explain)
        }
        Command::Eval { corpus, addr, lexicon, json } => {
            run_eval(corpus, addr, lexicon.config()?, json).await
        }
    }
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
