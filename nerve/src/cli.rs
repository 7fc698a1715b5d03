//! The nerve command line (clap), in the library so that the packaging step can render
//! man pages and shell completions from the same definition the binary parses
//! (`cargo run -p xtask -- dist-assets`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use common::status_cli::StatusArgs;
use common::telemetry::LogFormat;

/// Health-checks local services and keeps leased registrations for the healthy ones in
/// etcd (SmartStack nerve, etcd v3).
#[derive(Debug, Parser)]
#[command(name = "nerve", version)]
pub struct Cli {
    /// The config file (airbnb nerve JSON; comments and trailing commas allowed).
    /// Required to run; `status` reads its `admin_listen`.
    #[arg(short = 'c', long = "config", env = "NERVE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Overrides the config's `instance_id`.
    #[arg(
        short = 'i',
        long = "instance-id",
        visible_alias = "instance_id",
        env = "NERVE_INSTANCE_ID"
    )]
    pub instance_id: Option<String>,
    /// Validate the config, print every problem, and exit (0 valid, 64 invalid).
    #[arg(short = 'k', long = "check-config")]
    pub check_config: bool,
    /// Log line format: human or json.
    #[arg(long, env = "NERVE_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show what a running nerve believes (its admin endpoint's `/status`): a table per
    /// service; exit 0 when it answered, 1 when it is unreachable.
    Status {
        #[command(flatten)]
        view: StatusArgs,
    },
}
