//! nerve's integration tests, against real etcd (single node and 3-member clusters), real
//! HTTP/TCP services and real processes, all on 127.0.0.1. One test binary: the modules
//! below. Binary-level tests run the real `nerve` executable (`CARGO_BIN_EXE_nerve`) and
//! drive it with signals (and scrape its admin endpoint); the rest run `nerve::Nerve`
//! in-process.

mod binary;
mod checks;
mod etcd_faults;
mod observability;
mod registration;
mod status_table;
mod support;
