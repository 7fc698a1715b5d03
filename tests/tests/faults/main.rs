//! The fault suite (reliability §4.2): real etcd (single or a 3-member cluster), real nerve
//! processes (this test binary re-executed into `nerve::run`, so they can be SIGKILLed,
//! SIGSTOPped and SIGTERMed by PID), real synapse (in-process, counting), real HAProxy
//! (master-worker, reloaded through its master CLI) and real HTTP backends, under a
//! bounded loopback load ([`Load`](integration_tests::Load)) that counts every failed request.
//!
//! Faults: SIGKILL/SIGSTOP of etcd members and nerves, backend kills, `compact`, and a
//! TCP [`FaultProxy`] (blackhole) between a daemon and etcd.
//!
//! Profiles: `ci` (default) and `soak` (`FAULT_PROFILE=soak`: the long durations of §4.2
//! and 2,000 instances for S19). Every scenario prints one `FAULT_RESULT {json}` line to
//! stderr and appends it to `target/faults/results.jsonl`; `scripts/faults` turns them
//! into the table in docs/reliability.md.
//!
//! Layout: the shared world in [`world`] (with [`daemon`], [`tmpfs`], [`observe`] and
//! [`profile`] beside it), the scenarios by family: [`etcd`] (members fail),
//! [`etcd_data`] (what etcd holds and how it answers), [`nerves`], [`synapse_haproxy`],
//! [`clock_and_disk`] and [`scale`]. The child processes' entry points stay here, at the
//! root, because [`daemon::Daemon`] re-executes this binary with `--exact nerve_child`.

mod clock_and_disk;
mod daemon;
mod etcd;
mod etcd_data;
mod nerves;
mod observe;
mod profile;
mod scale;
mod synapse_haproxy;
mod tmpfs;
mod world;

use std::time::Duration;

use integration_tests::{Backend, FaultProxy};
use tokio::time::Instant;

use crate::daemon::{NERVE_CHILD_ENV, SYNAPSE_CHILD_ENV};
use crate::profile::TIMEOUT;

/// The entry point of the nerve child processes: `nerve::run` on the config file named
/// by `FAULTS_NERVE_CONFIG`, stopped by SIGTERM like the binary. Does nothing otherwise.
#[test]
#[ignore = "entry point of the nerve processes the fault tests start"]
fn nerve_child() {
    let Some(path) = std::env::var_os(NERVE_CHILD_ENV) else {
        return;
    };
    common::telemetry::init(common::telemetry::LogFormat::Human);
    let text = std::fs::read_to_string(&path).expect("nerve child config");
    let config = nerve::config::parse(&text, &Default::default()).expect("nerve child config");
    let result = child_runtime().block_on(async {
        let cancel = common::shutdown::on_signals().expect("signal handlers");
        nerve::run(config, cancel).await
    });
    std::process::exit(i32::from(result.is_err()));
}

/// The entry point of the synapse child processes (S20: they crash at failpoints):
/// `synapse::run` on the config file named by `FAULTS_SYNAPSE_CONFIG`.
#[test]
#[ignore = "entry point of the synapse processes the fault tests start"]
fn synapse_child() {
    let Some(path) = std::env::var_os(SYNAPSE_CHILD_ENV) else {
        return;
    };
    common::telemetry::init(common::telemetry::LogFormat::Human);
    let config = synapse::Config::load(std::path::Path::new(&path))
        .unwrap_or_else(|e| panic!("synapse child config: {e:?}"));
    let result = child_runtime().block_on(async {
        let cancel = common::shutdown::on_signals().expect("signal handlers");
        synapse::run(config, cancel).await
    });
    std::process::exit(i32::from(result.is_err()));
}

fn child_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The fault proxy itself: pass forwards, delay holds each chunk, blackhole hangs without
/// closing, reset closes at once, and pass heals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_proxy_modes() {
    let backend = Backend::start("p").await;
    let proxy = FaultProxy::start(backend.addr()).await;
    let get = |timeout: Duration| integration_tests::http_get_timeout(proxy.addr(), "/", timeout);
    assert_eq!(get(TIMEOUT).await.expect("pass").body, "p");
    proxy.delay(Duration::from_millis(300));
    let started = Instant::now();
    assert_eq!(get(TIMEOUT).await.expect("delay").body, "p");
    // Request and response each held 300 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    proxy.blackhole();
    let err = get(Duration::from_millis(500))
        .await
        .expect_err("blackhole");
    assert_eq!(err.kind(), std::io::ErrorKind::TimedOut, "{err}");
    proxy.reset();
    let started = Instant::now();
    get(TIMEOUT).await.expect_err("reset");
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "reset took {:?}",
        started.elapsed()
    );
    proxy.pass();
    assert_eq!(get(TIMEOUT).await.expect("healed").body, "p");
}
