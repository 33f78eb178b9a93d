//! Process configuration for `serve`: where to listen, which lexicon to load, and limits.
//!
//! The binary fills this from flags with `KASUHARA_*` environment fallbacks (clap); tests build
//! it directly and never touch the process environment.

use std::path::PathBuf;
use std::time::Duration;

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

/// Settings for one server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Directory of lexicon `.tsv` files.
    pub lexicon_dir: PathBuf,
    /// Grace period for open streams at shutdown.
    pub shutdown_grace: Duration,
    /// Capacity of the alert fan-out per subscriber.
    pub alert_buffer: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            lexicon_dir: PathBuf::from(DEFAULT_LEXICON_DIR),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            alert_buffer: DEFAULT_ALERT_BUFFER,
        }
    }
}

/// Parses a duration written as `250ms`, `5s` or `2m`.
///
/// # Errors
/// A message naming the value when it is not a number followed by `ms`, `s` or `m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| text.split_at(i))
        .ok_or_else(|| format!("duration {text:?} needs a unit: ms, s or m"))?;
    let n: u64 = number.parse().map_err(|_| format!("duration {text:?} must start with a number"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("duration {text:?} has unknown unit {unit:?} (use ms, s or m)")),
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
        for bad in ["5", "s", "5h", "-1s", ""] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "help: {err}");
        }
    }
}
