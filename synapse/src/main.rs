//! The synapse binary: parse the command line, set up logging, load the config, run.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use common::telemetry::{self, LogFormat};

/// Watches etcd and keeps a local HAProxy routing to the healthy instances of each service.
#[derive(Debug, Parser)]
#[command(name = "synapse", version)]
struct Cli {
    /// The config file (airbnb synapse JSON; comments and trailing commas allowed).
    #[arg(short = 'c', long = "config", env = "SYNAPSE_CONFIG")]
    config: PathBuf,
    /// Validate the config, print every problem, and exit (0 valid, 64 invalid).
    #[arg(long)]
    check_config: bool,
    /// Log line format: human or json.
    #[arg(long, default_value = "human")]
    log_format: LogFormat,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(common::EXIT_CONFIG as u8)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    telemetry::init(cli.log_format);
    let config = match synapse::Config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("error: invalid config {}:", cli.config.display());
            for e in &errors.0 {
                if e.path.is_empty() {
                    eprintln!("  {}", e.message);
                } else {
                    eprintln!("  {}: {}", e.path, e.message);
                }
            }
            return ExitCode::from(common::EXIT_CONFIG as u8);
        }
    };
    if cli.check_config {
        println!(
            "{}: valid ({} services)",
            cli.config.display(),
            config.services.len()
        );
        return ExitCode::SUCCESS;
    }
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: synapse::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let cancel = common::shutdown::on_signals().context("cannot install signal handlers")?;
        synapse::run(config, cancel).await.context("synapse failed")
    })
}
