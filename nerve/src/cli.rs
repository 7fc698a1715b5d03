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
    /// Deregister a service and keep it deregistered (until `undrain` or a restart of
    /// nerve); with --wait, wait until every live synapse watching its etcd path has
    /// applied the deletion. Exit 0: done (and confirmed by all); 2: not confirmed by
    /// the timeout; 1: the admin endpoint is unreachable; 64: bad usage or no such
    /// service.
    Drain {
        /// The service (a key of the config's `services`).
        service: String,
        /// Wait for every live synapse to confirm.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait in all (deregistration and confirmations).
        #[arg(long, default_value = "30", value_name = "SECONDS")]
        timeout: f64,
        /// The admin endpoint, `address:port` (default: the config's `admin_listen`).
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// End an operator drain: the service registers again once it is healthy.
    Undrain {
        service: String,
        #[arg(long, value_name = "ADDR")]
        admin: Option<std::net::SocketAddr>,
    },
}
