//! The drain barrier (issue 22), end to end with real etcd, real HAProxy and real HTTP
//! traffic: `POST /drain/<service>?wait=true` on nerve's admin endpoint returns once every
//! live synapse watching the service's path has applied the deletion, so the instance
//! can be stopped at once without a failed request — with HAProxy's health checks off,
//! so that nothing but the barrier protects the traffic. A synapse that cannot apply is
//! reported as not confirmed; a dead one drops out when its lease expires. nerve's
//! SIGTERM runs the same barrier before it exits.

use std::net::SocketAddr;
use std::time::Duration;

use integration_tests::{
    eventually, free_port, loopback, Backend, Etcd, InProcessNerve, InProcessSynapse, Load,
    LoadOptions, World,
};
use nerve::drain::DrainOutcome;

const PATH: &str = "/svc/web";
/// The deadline a test gives a drain (generous: a loaded machine).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

/// A synapse config routing `web` through `world`'s HAProxy, without health checks (no
/// `check` on the servers): only the registry decides where traffic goes. Server changes
/// go through the runtime API (as deployed); the reload command is unconfirmed.
fn synapse_config(world: &World, etcd: &Etcd, instance: &str, extra: &str) -> String {
    let master = world.dir.join("master.sock");
    format!(
        r#"{{
          "instance_id": "{instance}",
          "admin_listen": null,
          "services": {{
            "web": {{
              "discovery": {{"method": "etcd", "hosts": ["{etcd}"], "path": "{PATH}"}},
              "haproxy": {{"port": {port}, "listen": ["balance roundrobin"]}}
            }}
          }},
          "haproxy": {{
            "config_file_path": "{cfg}",
            "socket_file_path": "{sock}",
            "do_checks": true,
            "reload_command": "[ ! -e {master} ] || echo reload | socat stdio unix-connect:{master}",
            "restart_interval": 0.2,
            "bind_address": "127.0.0.1",
            "global": ["stats socket {sock} mode 600 level admin expose-fd listeners"],
            "defaults": ["mode http", "timeout connect 1s", "timeout client 10s",
                         "timeout server 10s"]
          }}
          {extra}
        }}"#,
        etcd = etcd.client_addr(),
        port = world.port,
        cfg = world.dir.join("haproxy.cfg").display(),
        sock = world.dir.join("admin.sock").display(),
        master = master.display(),
    )
}

/// A nerve registering `backend` as `host-<id>` under [`PATH`], its admin endpoint on
/// `admin`.
fn nerve(etcd: &Etcd, id: &str, backend: &Backend, admin: SocketAddr) -> InProcessNerve {
    let config = serde_json::json!({
        "instance_id": format!("host-{id}"),
        "etcd": {"endpoints": [etcd.endpoint()], "dial_timeout": 1, "request_timeout": 1},
        "admin_listen": admin.to_string(),
        "shutdown_timeout": 10,
        "services": {"web": {
            "host": "127.0.0.1", "port": backend.port(), "reporter_type": "etcd",
            "etcd_path": PATH, "check_interval": 0.25,
            "checks": [{"type": "http", "uri": "/health", "timeout": 0.5, "rise": 1, "fall": 3}],
        }},
    });
    InProcessNerve::start(&config.to_string())
}

/// `POST /drain/web?wait=true` on nerve's admin endpoint: the HTTP status and outcome.
async fn drain(admin: SocketAddr, timeout: Duration) -> (u16, DrainOutcome) {
    let target = format!("/drain/web?wait=true&timeout={}", timeout.as_secs_f64());
    let (code, body) = nerve::drain::post(admin, &target, timeout + Duration::from_secs(10))
        .await
        .expect("nerve's admin endpoint answers");
    let outcome = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    (code, outcome)
}

/// Live synapses publishing under the default status prefix, by instance id.
async fn published(etcd: &Etcd) -> Vec<String> {
    let mut client = etcd.client().await;
    let resp = client
        .get(
            "/synapse/applied/",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .expect("list the applied status");
    let mut ids: Vec<String> = resp
        .kvs()
        .iter()
        .filter_map(|kv| common::applied::Applied::decode(kv.value()))
        .map(|a| a.instance_id)
        .collect();
    ids.sort();
    ids
}

/// One consumer host: a synapse and the HAProxy it drives.
async fn consumer(etcd: &Etcd, instance: &str, extra: &str) -> (World, InProcessSynapse) {
    let mut world = World::new();
    let synapse = InProcessSynapse::start(&synapse_config(&world, etcd, instance, extra));
    world.start_haproxy().await;
    (world, synapse)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_then_stop_fails_no_request_with_health_checks_off() {
    let etcd = Etcd::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (admin_a, admin_b) = (loopback(free_port()), loopback(free_port()));
    let _nerve_a = nerve(&etcd, "a", &a, admin_a);
    let _nerve_b = nerve(&etcd, "b", &b, admin_b);
    let (world, synapse) = consumer(&etcd, "lb-1", "").await;
    world.wait_answering(&["a", "b"]).await;
    assert!(
        !world.haproxy_cfg().contains(" check"),
        "health checks must be off:\n{}",
        world.haproxy_cfg()
    );

    let load = Load::start(
        loopback(world.port),
        LoadOptions {
            rate: 200,
            ..LoadOptions::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, outcome) = drain(admin_b, DRAIN_TIMEOUT).await;
    // The deploy tool's next step: stop the instance at once.
    drop(b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;

    assert_eq!(code, 200, "{outcome:?}");
    assert!(outcome.deregistered && outcome.complete(), "{outcome:?}");
    let barrier = outcome.barrier.expect("waited");
    assert_eq!(barrier.watching, 1, "{barrier:?}");
    assert_eq!(barrier.confirmed, ["lb-1"]);
    assert!(barrier.revision > 0 && outcome.revision == Some(barrier.revision));
    assert_eq!(
        report.failed(),
        0,
        "failed requests: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        report.ok_by_backend.get("b").copied().unwrap_or(0) > 0,
        "{report:?}"
    );
    assert!(
        report.ok_by_backend.get("a").copied().unwrap_or(0) > 0,
        "{report:?}"
    );
    // Drained until told otherwise: the healthy instance stays out of etcd...
    world.wait_answering(&["a"]).await;
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undrain_registers_the_service_again() {
    let etcd = Etcd::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (admin_a, admin_b) = (loopback(free_port()), loopback(free_port()));
    let _nerve_a = nerve(&etcd, "a", &a, admin_a);
    let _nerve_b = nerve(&etcd, "b", &b, admin_b);
    let (world, synapse) = consumer(&etcd, "lb-1", "").await;
    world.wait_answering(&["a", "b"]).await;
    let (code, outcome) = drain(admin_b, DRAIN_TIMEOUT).await;
    assert_eq!(code, 200, "{outcome:?}");
    // b is healthy all along, yet stays out...
    world.wait_answering(&["a"]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        world.answering(8).await.expect("routes"),
        ["a".to_owned()].into()
    );
    // ...until undrained.
    let (code, body) = nerve::drain::post(admin_b, "/undrain/web", Duration::from_secs(5))
        .await
        .expect("undrain");
    assert_eq!(code, 200, "{body}");
    world.wait_answering(&["a", "b"]).await;
    // An unknown service is a 404, not a silent success.
    let (code, _) = nerve::drain::post(admin_b, "/drain/nope", Duration::from_secs(5))
        .await
        .expect("answer");
    assert_eq!(code, 404);
    synapse.stop().await;
}

/// A synapse on a runtime of its own, so that it can die the way a killed process does:
/// its tasks are dropped where they stand (no lease revoke), and its status key stays
/// until the lease expires.
struct Killable {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Killable {
    fn start(config_text: &str) -> Self {
        let config = synapse::Config::parse(config_text, None)
            .unwrap_or_else(|e| panic!("config:\n{e}\n{config_text}"));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        runtime.spawn(synapse::run(
            config,
            tokio_util::sync::CancellationToken::new(),
        ));
        Self {
            runtime: Some(runtime),
        }
    }

    fn kill(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_synapse_is_reported_and_a_dead_one_drops_out() {
    let etcd = Etcd::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (admin_a, admin_b) = (loopback(free_port()), loopback(free_port()));
    let _nerve_a = nerve(&etcd, "a", &a, admin_a);
    let _nerve_b = nerve(&etcd, "b", &b, admin_b);
    let (good, good_synapse) = consumer(&etcd, "lb-good", "").await;
    let (mut stuck, stuck_synapse) = consumer(&etcd, "lb-stuck", "").await;
    // The dead one: file output only, a short status lease.
    let dead_dir = integration_tests::Workdir::new();
    let mut dead = Killable::start(&format!(
        r#"{{"instance_id": "lb-dead", "admin_listen": null,
            "applied_status": {{"lease_ttl": 2}},
            "services": {{"web": {{"discovery": {{"method": "etcd", "hosts": ["{}"], "path": "{PATH}"}}}}}},
            "file_output": {{"output_directory": "{}"}}}}"#,
        etcd.client_addr(),
        dead_dir.path().display()
    ));
    good.wait_answering(&["a", "b"]).await;
    stuck.wait_answering(&["a", "b"]).await;
    eventually(Duration::from_secs(20), || async {
        let ids = published(&etcd).await;
        if ids == ["lb-dead", "lb-good", "lb-stuck"] {
            Ok(())
        } else {
            Err(format!("published: {ids:?}"))
        }
    })
    .await;

    // lb-stuck's HAProxy goes away: its synapse can no longer apply anything.
    if let Some(h) = stuck.haproxy.take() {
        h.stop().await;
    }
    // lb-dead dies without a word: its key stays until the lease (2 s) expires.
    dead.kill();

    let (code, outcome) = drain(admin_b, Duration::from_secs(8)).await;
    assert_eq!(code, 504, "{outcome:?}");
    assert!(outcome.deregistered && !outcome.complete(), "{outcome:?}");
    let barrier = outcome.barrier.expect("waited");
    assert_eq!(barrier.confirmed, ["lb-good"], "{barrier:?}");
    let lagging: Vec<&str> = barrier
        .not_confirmed
        .iter()
        .map(|l| l.instance_id.as_str())
        .collect();
    assert_eq!(lagging, ["lb-stuck"], "{barrier:?}");
    assert!(barrier.not_confirmed[0].applied < barrier.revision);
    assert_eq!(barrier.watching, 2, "{barrier:?}");
    assert_eq!(published(&etcd).await, ["lb-good", "lb-stuck"]);
    good.wait_answering(&["a"]).await;

    // A clean stop removes the synapse's key at once (the lease is revoked).
    stuck_synapse.stop().await;
    assert_eq!(published(&etcd).await, ["lb-good"]);
    good_synapse.stop().await;
    assert!(published(&etcd).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_waits_for_the_synapses_before_exiting() {
    let etcd = Etcd::start().await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let (admin_a, admin_b) = (loopback(free_port()), loopback(free_port()));
    let _nerve_a = nerve(&etcd, "a", &a, admin_a);
    let nerve_b = nerve(&etcd, "b", &b, admin_b);
    let (world, synapse) = consumer(&etcd, "lb-1", "").await;
    world.wait_answering(&["a", "b"]).await;
    let load = Load::start(
        loopback(world.port),
        LoadOptions {
            rate: 200,
            ..LoadOptions::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    // SIGTERM; when nerve has exited, the instance stops at once.
    nerve_b.terminate().await;
    drop(b);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    assert_eq!(
        report.failed(),
        0,
        "failed requests: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(
        report.ok_by_backend.get("b").copied().unwrap_or(0) > 0,
        "{report:?}"
    );
    synapse.stop().await;
}
