//! Tracing set-up for the binaries: human-readable lines by default, JSON on request.
//! The filter comes from `RUST_LOG` (default `info`). Colours only when stderr is a
//! terminal: escape codes in a journal or a container log are noise.

use std::io::IsTerminal;

use tracing_subscriber::{fmt, EnvFilter};

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "human" | "text" => Ok(Self::Human),
            "json" => Ok(Self::Json),
            _ => Err(format!("unknown log format {s:?} (human or json)")),
        }
    }
}

/// Installs the global subscriber, writing to stderr. Safe to call twice (the second
/// call does nothing), so tests can call it freely.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .try_init(),
    };
}

/// For tests: logs to the test harness's captured output (which libtest prints on
/// stdout: colours only when that is a terminal, not in a CI log).
pub fn init_for_tests() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .with_ansi(std::io::stdout().is_terminal())
        .try_init();
}
