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
    match cli.command {
        Some(Cmd::Status { view }) => {
            return ExitCode::from(status_cli::run(view.request(
                cli.config.as_deref(),
                common::admin::NERVE_DEFAULT_LISTEN,
                "/status".into(),
                nerve::status_table::render,
            )));
        }
        Some(Cmd::Drain {
            service,
            wait,
            timeout,
            admin,
            json,
        }) => {
            if !(timeout > 0.0 && timeout <= 3600.0) {
                eprintln!("error: --timeout must be seconds, more than 0 and at most 3600");
                return ExitCode::from(exit_config());
            }
            let target = format!("/drain/{service}?wait={wait}&timeout={timeout}");
            return ExitCode::from(admin_post(
                cli.config.as_deref(),
                admin,
                &target,
                timeout,
                json,
            ));
        }
        Some(Cmd::Undrain { service, admin }) => {
            return ExitCode::from(admin_post(
                cli.config.as_deref(),
                admin,
                &format!("/undrain/{service}"),
                5.0,
                false,
            ));
        }
        None => {}
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

/// `POST`s `target` to the admin endpoint and prints the answer; the exit code of
/// `nerve drain` / `nerve undrain`.
fn admin_post(
    config: Option<&std::path::Path>,
    admin: Option<std::net::SocketAddr>,
    target: &str,
    timeout: f64,
    json: bool,
) -> u8 {
    let addr =
        match common::admin::status_address(admin, config, common::admin::NERVE_DEFAULT_LISTEN) {
            Ok(addr) => addr,
            Err(e) => {
                eprintln!("error: {e}");
                return exit_config();
            }
        };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    // The endpoint answers within `timeout`; allow for the round trip.
    let wait = std::time::Duration::from_secs_f64(timeout) + std::time::Duration::from_secs(5);
    let (code, body) = match runtime.block_on(nerve::drain::post(addr, target, wait)) {
        Ok(answer) => answer,
        Err(e) => {
            eprintln!("error: the admin endpoint at {addr} is unreachable: {e}");
            return 1;
        }
    };
    match code {
        200 | 504 => {}
        400 | 404 => {
            let doc: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            eprintln!("error: {}", doc["error"].as_str().unwrap_or(body.trim()));
            return exit_config();
        }
        _ => {
            eprintln!(
                "error: the admin endpoint at {addr} answered HTTP {code}: {}",
                body.trim()
            );
            return 1;
        }
    }
    if target.starts_with("/undrain/") {
        print!("{body}");
        return 0;
    }
    match serde_json::from_str::<nerve::drain::DrainOutcome>(&body) {
        Ok(outcome) => {
            if json {
                print!("{body}");
            } else {
                print!("{}", nerve::drain::render(&outcome));
            }
            if outcome.complete() {
                0
            } else {
                2
            }
        }
        Err(e) => {
            eprintln!("error: unexpected answer from {addr}: {e}");
            1
        }
    }
}

fn exit_config() -> u8 {
    u8::try_from(common::EXIT_CONFIG).unwrap_or(64)
}
