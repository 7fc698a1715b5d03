//! synapse ↔ HAProxy without reloads: the runtime API, hitless reloads under load, and
//! managed HAProxy. Real etcd, real HAProxy 2.6 (master-worker), real HTTP backends,
//! real requests through HAProxy; "no reload" is HAProxy's own reload counter and worker
//! PID (`show proc`), not synapse's word for it.
//!
//! The world each test starts is in [`world`]; the tests by family: [`runtime_api`]
//! (server changes without reloads), [`reloads`] (hitless reloads, a refused reload,
//! managed HAProxy), [`quarantine`] and [`guard`] (issue 17), [`check_slices`] (a change
//! while the periodic check reads a slice beside the loop, issue 19).

mod check_slices;
mod guard;
mod quarantine;
mod reloads;
mod runtime_api;
mod world;

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(20);
