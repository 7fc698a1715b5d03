//! synapse's configuration: the airbnb synapse JSON format as a superset.
//!
//! ```text
//! file (JSON with comments) ──parse──► SynapseFile (serde, deny_unknown_fields)
//!                            ──validate──► Config (typed: ServiceName, Port, Duration, ...)
//! ```
//!
//! Every problem, structural or semantic, is collected with its key path
//! (`services.web.discovery.path: ...`) and reported at once; `--check-config` runs
//! exactly this. Operator-written HAProxy lines are trusted, but may not contain a
//! newline, a carriage return or a NUL: one such byte would let a single config value
//! open a new HAProxy section.
//!
//! The config layer is plain data at the bottom of synapse: it imports only `common`,
//! the backend data types ([`crate::backends`]) and [`crate::hash`]. Where to look:
//!
//! - [`file`](mod@file): the file format (serde structs); [`model`]: the validated types;
//!   [`defaults`]: the named defaults.
//! - `load`: `Config::load`/`parse`/`from_file` and the top-level keys; `read`: JSON with
//!   comments; `conf_d`: `service_conf_dir`.
//! - Validation per section: `haproxy` (top-level), `service` (one service, its
//!   `haproxy` section, backend names across services), `discovery` (every method);
//!   `check`: the line and word checks they share.
//! - `upstream`: the rewrite of airbnb/Yelp (SmartStack, the seed) shapes into ours.

pub mod defaults;
pub mod file;
pub mod model;

mod check;
mod conf_d;
mod discovery;
mod haproxy;
mod load;
mod read;
mod service;
mod upstream;

#[cfg(test)]
mod tests;

pub use file::*;
pub use model::*;
