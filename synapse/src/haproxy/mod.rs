//! The HAProxy output: render → plan → runtime commands → write (+check) → reload.
//!
//! ```text
//! desired backends ─► render (pure) ─► ConfigModel ─┐
//! stats socket: show info / show backend / show servers state ─► RunningState ─┤
//!                                                   plan(running, desired) ◄┘
//!   commands ─► stats socket (add/del server, weight, state, addr)   no reload
//!   file     ─► written atomically (+check) whenever the render changed, so a later
//!               reload or restart runs what the socket applied
//!   reload?  ─► rate-limited (restart_interval + jitter), coalesced, server state
//!               dumped to `server-state-file` first, confirmed through the master CLI,
//!               retried with backoff; then a second runtime pass fixes what the
//!               state file restored
//! ```
//!
//! Without a stats socket (`do_socket: false` or no `socket_file_path`) every change of
//! the rendered file is a reload, as before. The runtime state is checked again every
//! few seconds, in slices of whole backends with the changes applied in between, so
//! drift (a hand-made change, an HAProxy restarted elsewhere) is undone and no change
//! waits for a check of the whole fleet.
//!
//! Model first, text last: once HAProxy runs what the file holds, the output keeps the
//! desired state as a model (`output::Modelled`: each service's rendered part and the
//! backends parsed from it). A change to some services then costs O(their servers): only
//! their parts are rendered and modelled again, only their backends' state is read
//! (`show servers state <backend>`) and planned, and the file is assembled from the parts
//! at most [`FILE_WRITE_DELAY`] later, once for all changes meanwhile, and written (and
//! checked) by a task beside the reconcile loop, which no change waits for. Everything else
//! (a reload, a refused check, a quarantined server, slots, a restarted HAProxy) goes the
//! full way: render everything, model it, plan every backend.

pub mod answers;
pub mod config;
pub mod managed;
pub mod model;
mod output;
pub mod plan;
pub mod quarantine;
pub mod reload;
pub mod runtime;

pub use output::{Applied, ApplyError, HaproxyOutput, Preview, FILE_WRITE_DELAY};
