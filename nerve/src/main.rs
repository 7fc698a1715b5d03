//! The nerve binary: parse the command line, set up logging, load the config, run; or,
//! with `status`, show what a running nerve reports on its admin endpoint.
//! Exit codes: 0 after a clean stop, 64 for a bad command line or config, 1 otherwise
//! (`status`: 1 when the endpoint is unreachable).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, Parser};
use common::status_cli;
use common::telemetry;
use nerve::cli::{Cli, Cmd};
use nerve::config::{self, Overrides};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(exit_config())
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    if let Some(Cmd::Status { view }) = cli.command {
        return ExitCode::from(status_cli::run(view.request(
            cli.config.as_deref(),
            common::admin::NERVE_DEFAULT_LISTEN,
            "/status".into(),
            nerve::status_table::render,
        )));
    }
    let Some(path) = cli.config.clone() else {
        let _ = Cli::command()
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "the config file is required: -c <FILE> or NERVE_CONFIG",
            )
            .print();
        return ExitCode::from(exit_config());
    };
    telemetry::init(cli.log_format);
    let overrides = Overrides {
        instance_id: cli.instance_id.clone(),
    };
    let config = match config::load(&path, &overrides) {
        Ok(config) => config,
        Err(errors) => {
            eprintln!("error: invalid config {}:", path.display());
            for line in errors.to_string().lines() {
                eprintln!("  {line}");
            }
            return ExitCode::from(exit_config());
        }
    };
    for w in &config.warnings {
        if cli.check_config {
            eprintln!("warning: {}: {}", w.path, w.message);
        } else {
            tracing::warn!(key = %w.path, "config: {}", w.message);
        }
    }
    if cli.check_config {
        println!(
            "{}: ok (instance {}, {} services)",
            path.display(),
            config.instance_id,
            config.services.len()
        );
        return ExitCode::SUCCESS;
    }
    match run(path, overrides, config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(path: PathBuf, overrides: Overrides, config: config::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let cancel = common::shutdown::on_signals().context("cannot install signal handlers")?;
        let nerve = nerve::Nerve::new(config);
        common::systemd::notify_when_ready(nerve.ready_flag(), cancel.clone());
        nerve::reload_on_sighup(path, overrides, nerve.reloader())
            .context("cannot install the SIGHUP handler")?;
        nerve.run(cancel).await.context("nerve failed")
    })
}

fn exit_config() -> u8 {
    u8::try_from(common::EXIT_CONFIG).unwrap_or(64)
}
