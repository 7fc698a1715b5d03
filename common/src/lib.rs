//! Shared pieces of nerve and synapse: the registration contract that nerve writes and
//! synapse reads, the etcd key schema, etcd connection settings, config-file parsing,
//! backoff, shutdown signals and tracing setup; the admin endpoint and the `status`
//! subcommands' tables.

pub mod admin;
pub mod applied;
pub mod backoff;
pub mod child_env;
pub mod config;
pub mod error;
pub mod etcd;
#[doc(hidden)]
pub mod fuzzing;
pub mod imds;
pub mod key;
pub mod names;
pub mod registration;
pub mod secret;
pub mod shutdown;
pub mod status_cli;
pub mod systemd;
pub mod table;
pub mod telemetry;
pub mod upstream;
pub mod zone;
pub mod zookeeper;

pub use backoff::Backoff;
pub use key::{KeyError, NerveKey, ParsedKey, ServicePath};
pub use names::{InstanceId, NameError, ServiceName};
pub use registration::{
    AddressPolicy, Host, Port, Registration, RegistrationError, ServerOption, ServerOptions, Weight,
};
pub use secret::Secret;

/// The exit code for a bad command line or configuration (`EX_USAGE` from sysexits.h).
pub const EXIT_CONFIG: i32 = 64;
