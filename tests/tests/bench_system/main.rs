//! Benchmarks (not tests; `#[ignore]`d, run by `scripts/bench`) for the targets of
//! DESIGN §9 other than put → routed (that is `bench_propagation.rs`):
//!
//! - `bench_health_flip`: a nerve-checked service turns unhealthy (healthy) → its key is
//!   gone from (back in) etcd, against one check interval + one etcd round trip;
//! - `bench_nerve_steady`: nerve with 100 services at 1 s checks — RSS, CPU, and its etcd
//!   writes in steady state (etcd's revision must not move);
//! - `bench_render`: render + parse + runtime plan of 100 … 10,000 servers, in-process;
//! - `bench_synapse_scale`: the synapse binary's initial sync of 100 … 100,000 keys and
//!   its RSS;
//! - `bench_churn`: 1,000 registration changes/s for 60 s across 100 services, runtime
//!   API vs reload-every-change, under client load;
//! - `bench_reload_under_load`: 100 synapse-driven reloads under new-connection and
//!   keep-alive clients, the seed's `global`/`defaults` as written (synapse adds what a
//!   hitless reload needs) vs plain ones with `seamless_reload_lines: false`.
//!
//! Real etcd, HAProxy and backends on loopback; nerve and synapse are the release
//! binaries (`target/release`) where their CPU and memory are measured. Each prints its
//! table and writes `target/bench/<name>.json`. Sizes and durations are environment
//! knobs (`BENCH_*`, listed in docs/benchmarks.md) so a smoke run can shrink them.
//!
//! Layout: what several benchmarks read (etcd, `/metrics`) in [`observe`];
//! the benchmarks in [`nerve`], [`scale`], [`churn`] and [`reload`].

mod churn;
mod nerve;
mod observe;
mod reload;
mod scale;

use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);
