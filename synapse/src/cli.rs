//! The synapse command line (clap), in the library so that the packaging step can render
//! man pages and shell completions from the same definition the binary parses
//! (`cargo run -p xtask -- dist-assets`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use common::status_cli::StatusArgs;
use common::telemetry::LogFormat;

/// Watches etcd and keeps a local HAProxy routing to the healthy instances of each service.
#[derive(Debug, Parser)]
#[command(name = "synapse", version)]
pub struct Cli {
    /// The config file (airbnb synapse JSON; comments and trailing commas allowed).
    /// Required to run; `status` reads its `admin_listen`.
    #[arg(short = 'c', long = "config", env = "SYNAPSE_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Validate the config, print every problem, and exit (0 valid, 64 invalid).
    #[arg(long)]
    pub check_config: bool,
    /// The same as `synapse diff`: print what a run would do, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Log line format: human or json.
    #[arg(long, env = "SYNAPSE_LOG_FORMAT", default_value = "human")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Show what a running synapse believes (its admin endpoint's `/status`): a table per
    /// service; with a service, its servers in the registry beside HAProxy's runtime
    /// state. Exit 0 when it answered, 1 when it is unreachable or has no such service.
    Status {
        /// One service: its servers, registry and HAProxy side by side.
        service: Option<String>,
        #[command(flatten)]
        view: StatusArgs,
    },
    /// Read the registry once and print what a run would do now: the runtime commands
    /// it would send, whether it would reload HAProxy and why, and a unified diff of
    /// haproxy.cfg. Changes nothing. Exit 0 when nothing would change, 2 when something
    /// would, 64 for a bad config, 1 when the registry does not answer in time.
    Diff {
        /// How long to wait for every service's first complete set, in seconds.
        #[arg(long, default_value_t = 10.0)]
        timeout: f64,
    },
}
