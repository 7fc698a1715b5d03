//! The synapse binary: parse the command line, set up logging, load the config, run; or,
//! with `status`, show what a running synapse reports on its admin endpoint.
//! Exit codes: 0 after a clean stop, 64 for a bad command line or config, 1 otherwise
//! (`status`: 1 when the endpoint is unreachable; `diff`: 2 when a run would change
//! something). SIGHUP re-reads the config file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{CommandFactory, Parser};
use common::status_cli;
use common::telemetry;
use synapse::cli::{Cli, Cmd};

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
    if let Some(Cmd::Status { service, view }) = cli.command {
        let (path, render): (String, status_cli::Render) = match service {
            Some(s) => (
                format!("/status/{s}"),
                synapse::status_table::render_service,
            ),
            None => ("/status".into(), synapse::status_table::render),
        };
        return ExitCode::from(status_cli::run(view.request(
            cli.config.as_deref(),
            common::admin::SYNAPSE_DEFAULT_LISTEN,
            path,
            render,
        )));
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
    for w in &config.warnings {
        if cli.check_config {
            eprintln!("warning: {}: {}", w.path, w.message);
        } else {
            tracing::warn!(key = %w.path, "config: {}", w.message);
        }
    }
    let diff_timeout = match cli.command {
        Some(Cmd::Diff { timeout }) => Some(timeout),
        _ if cli.dry_run => Some(10.0),
        _ => None,
    };
    if let Some(timeout) = diff_timeout {
        return diff(&config, timeout);
    }
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
    match run(config, path) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `synapse diff`: prints the report; 0 nothing would change, 2 something would.
fn diff(config: &synapse::Config, timeout: f64) -> ExitCode {
    let timeout = match std::time::Duration::try_from_secs_f64(timeout) {
        Ok(t) if !t.is_zero() => t,
        _ => {
            eprintln!("error: --timeout must be a positive number of seconds");
            return ExitCode::from(common::EXIT_CONFIG as u8);
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(synapse::dry_run::dry_run(config, timeout))
                .map_err(anyhow::Error::from)
        });
    match result {
        Ok(report) => {
            print!("{}", report.render());
            if report.changes() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: synapse::Config, path: PathBuf) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let cancel = common::shutdown::on_signals().context("cannot install signal handlers")?;
        let counters = std::sync::Arc::<synapse::Counters>::default();
        common::systemd::notify_when_ready(counters.services.ready_flag(), cancel.clone());
        // SIGHUP re-reads `path` (see `synapse::run_reloading`).
        synapse::run_reloading(config, path, counters, cancel)
            .await
            .context("synapse failed")
    })
}
