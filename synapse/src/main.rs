//! The synapse binary: parse the command line, set up logging, load the config, run; or,
//! with `status`, print what a running synapse reports on its admin endpoint.
//! Exit codes: 0 after a clean stop, 64 for a bad command line or config, 1 otherwise
//! (`status`: 1 when the endpoint is unreachable).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser, Subcommand};
use common::telemetry::{self, LogFormat};

/// Watches etcd and keeps a local HAProxy routing to the healthy instances of each service.
#[derive(Debug, Parser)]
#[command(name = "synapse", version)]
struct Cli {
    /// The config file (airbnb synapse JSON; comments and trailing commas allowed).
    /// Required to run; `status` reads its `admin_listen`.
    #[arg(short = 'c', long = "config", env = "SYNAPSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Validate the config, print every problem, and exit (0 valid, 64 invalid).
    #[arg(long)]
    check_config: bool,
    /// Log line format: human or json.
    #[arg(long, env = "SYNAPSE_LOG_FORMAT", default_value = "human")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print what a running synapse believes (its admin endpoint's `/status` JSON): exit
    /// 0 when it answered, 1 when it is unreachable.
    Status {
        /// The admin endpoint, `address:port`. Default: the config's `admin_listen`.
        #[arg(long, value_name = "ADDR")]
        admin: Option<SocketAddr>,
    },
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
    if let Some(Cmd::Status { admin }) = cli.command {
        return status(admin, cli.config.as_deref());
    }
    let Some(path) = cli.config else {
        let _ = Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the config file is required: -c <FILE> or SYNAPSE_CONFIG",
            )
            .print();
        return ExitCode::from(common::EXIT_CONFIG as u8);
    };
    telemetry::init(cli.log_format);
    let config = match synapse::Config::load(&path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("error: invalid config {}:", path.display());
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
        for w in config.haproxy.iter().flat_map(|h| h.hitless_warnings()) {
            eprintln!("warning: {w}");
        }
        println!(
            "{}: valid ({} services)",
            path.display(),
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

/// `synapse status`: prints the `/status` JSON of a running synapse.
fn status(admin: Option<SocketAddr>, config: Option<&Path>) -> ExitCode {
    use common::admin::StatusError;
    let addr = match common::admin::status_address(admin, config) {
        Ok(addr) => addr,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(common::EXIT_CONFIG as u8);
        }
    };
    let fetched = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| StatusError::Unreachable { addr, error })
        .and_then(|rt| rt.block_on(common::admin::status(addr)));
    match fetched {
        Ok(body) => {
            print!("{body}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
