//! Both daemons against a real etcd serving TLS with client-certificate auth
//! (`--client-cert-auth --trusted-ca-file`), certificates generated per test by the
//! harness ([`TestPki`]): registration, watch and lease expiry work; a wrong CA, a
//! missing or foreign client certificate fail with an error naming the endpoint, never a
//! hang, and retries back off.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::error::error_chain;
use common::{Host, InstanceId, Port, Registration, ServiceName, ServicePath};
use etcd_client::{GetOptions, PutOptions};
use integration_tests::{
    eventually, init_tracing, Backend, ClientTls, Etcd, InProcessSynapse as Synapse, Workdir,
};
use nerve::reporter::{Desired, Entry, EtcdReporter, EtcdReporterConfig, Reporter};
use tokio_util::sync::CancellationToken;

const TIMEOUT: Duration = Duration::from_secs(30);

fn registration(name: &str, port: u16) -> String {
    Registration {
        host: Host::Ip([127, 0, 0, 1].into()),
        port: Port::new(port).expect("port"),
        name: InstanceId::new(name).expect("instance id"),
        weight: None,
        haproxy_server_options: None,
        labels: BTreeMap::default(),
    }
    .encode()
}

/// A synapse config: service `web` from `path` on `endpoint` with these TLS keys, written
/// to `out` by `file_output`.
fn synapse_config(endpoint: &str, tls_keys: &str, path: &str, out: &Path) -> String {
    format!(
        r#"{{"services": {{"web": {{"discovery": {{"method": "etcd", "hosts": ["{endpoint}"],
             "path": "{path}", "etcd": {{"dial_timeout": 1, "request_timeout": 2,
             "keepalive_interval": 1, "keepalive_timeout": 1, {tls_keys}}}}}}}}},
           "file_output": {{"output_directory": "{out}"}}}}"#,
        out = out.display(),
    )
}

/// The server names in synapse's `web.json`.
fn names_in(out: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(out.join("web.json")).unwrap_or_default();
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    let mut names: Vec<String> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_watches_a_tls_etcd_and_follows_lease_expiry() {
    init_tracing();
    let etcd = Etcd::start_tls().await;
    let pki = etcd.pki().expect("tls");
    let client = etcd.client().await;
    let mut kv = client.kv_client();
    let path = "/it/tls/web";
    kv.put(format!("{path}/keep"), registration("keep", 8001), None)
        .await
        .expect("put over TLS");
    // A lease nobody keeps alive: its key must go when it expires.
    let lease = client
        .lease_client()
        .grant(2, None)
        .await
        .expect("grant over TLS");
    kv.put(
        format!("{path}/brief"),
        registration("brief", 8002),
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await
    .expect("put with lease");

    let dir = Workdir::new();
    let out = dir.join("out");
    std::fs::create_dir_all(&out).expect("out dir");
    let synapse = Synapse::start(&synapse_config(
        &etcd.endpoint(),
        &pki.config_keys(ClientTls::Trusted),
        path,
        &out,
    ));
    // The list saw both (or the lease already expired on a slow machine: then only keep).
    eventually(TIMEOUT, || async {
        names_in(&out).contains(&"keep".to_owned())
    })
    .await;
    // Lease expiry arrives through the watch.
    eventually(TIMEOUT, || async { names_in(&out) == ["keep"] }).await;
    // And a new registration too.
    kv.put(format!("{path}/late"), registration("late", 8003), None)
        .await
        .expect("put");
    eventually(TIMEOUT, || async { names_in(&out) == ["keep", "late"] }).await;
    assert!(synapse.is_running());
    synapse.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nerve_registers_over_tls_and_keeps_its_lease_alive() {
    init_tracing();
    let etcd = Etcd::start_tls().await;
    let pki = etcd.pki().expect("tls");
    let backend = Backend::start("n1").await;
    let path = "/it/tls-nerve/web";
    let config = format!(
        r#"{{"instance_id": "host-n1", "lease_ttl": 2, "shutdown_timeout": 5,
            "etcd": {{"endpoints": ["{ep}"], "dial_timeout": 1, "request_timeout": 2, {tls}}},
            "services": {{"web": {{"host": "127.0.0.1", "port": {port}, "reporter_type": "etcd",
                "etcd_path": "{path}", "check_interval": 0.25,
                "checks": [{{"type": "tcp", "timeout": 0.5}}]}}}}}}"#,
        ep = etcd.endpoint(),
        tls = pki.config_keys(ClientTls::Trusted),
        port = backend.port(),
    );
    let config = nerve::config::parse(&config, &Default::default()).expect("nerve config");
    let cancel = CancellationToken::new();
    let nerve = tokio::spawn(nerve::run(config, cancel.clone()));
    let client = etcd.client().await;
    let keys = || {
        let mut kv = client.kv_client();
        async move {
            let resp = kv
                .get(path, Some(GetOptions::new().with_prefix()))
                .await
                .expect("get over TLS");
            resp.kvs()
                .iter()
                .map(|kv| (kv.key_str().unwrap_or("").to_owned(), kv.lease()))
                .collect::<Vec<_>>()
        }
    };
    let registered = eventually(TIMEOUT, || async {
        let now = keys().await;
        if now.len() == 1 {
            Ok(now)
        } else {
            Err(format!("keys: {now:?}"))
        }
    })
    .await;
    assert!(
        registered[0].1 != 0,
        "registered under a lease: {registered:?}"
    );
    // Idle on purpose for three TTLs: the key survives only if keep-alives go through.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        keys().await,
        registered,
        "the lease was kept alive over TLS"
    );
    // A clean stop revokes the lease over TLS.
    cancel.cancel();
    tokio::time::timeout(TIMEOUT, nerve)
        .await
        .expect("nerve stops")
        .expect("nerve task")
        .expect("nerve ran");
    assert_eq!(keys().await, vec![], "revoked on stop");
}

/// What a client with `which` identity gets.
const FAILURES: [(ClientTls, &str); 3] = [
    (ClientTls::WrongCa, "wrong CA"),
    (ClientTls::NoClientCert, "no client certificate"),
    (
        ClientTls::ForeignClientCert,
        "client certificate from another CA",
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synapse_certificate_failures_name_the_endpoint_and_back_off() {
    init_tracing();
    let etcd = Etcd::start_tls().await;
    let pki = etcd.pki().expect("tls");
    let endpoint = etcd.endpoint();
    let dir = Workdir::new();
    for (which, what) in FAILURES {
        let out = dir.join(what.replace(' ', "-"));
        std::fs::create_dir_all(&out).expect("out dir");
        let synapse = Synapse::start(&synapse_config(
            &endpoint,
            &pki.config_keys(which),
            "/it/tls-fail/web",
            &out,
        ));
        let error = eventually(TIMEOUT, || async {
            let status = synapse.counters.services.snapshot();
            let error = status
                .services
                .get("web")
                .and_then(|s| s.etcd.as_ref().and_then(|e| e.last_error.clone()));
            error.ok_or_else(|| format!("{what}: no error yet: {status:?}"))
        })
        .await;
        assert!(
            error.contains(&endpoint),
            "{what}: the error names the endpoint: {error}"
        );
        // Retries back off (100 ms doubling to 2 s): a few in 5 s, not a busy loop.
        let before = synapse.get(|c| &c.watch_restarts);
        tokio::time::sleep(Duration::from_secs(5)).await;
        let retries = synapse.get(|c| &c.watch_restarts) - before;
        assert!(
            (1..=15).contains(&retries),
            "{what}: {retries} retries in 5 s"
        );
        assert!(synapse.is_running(), "{what}: synapse keeps running");
        assert!(!out.join("web.json").exists(), "{what}: nothing was listed");
        synapse.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nerve_certificate_failures_name_the_endpoint_without_hanging() {
    init_tracing();
    let etcd = Etcd::start_tls().await;
    let pki = etcd.pki().expect("tls");
    let endpoint = etcd.endpoint();
    let path = ServicePath::new("/it/tls-fail-nerve/web").expect("path");
    let desired: Desired = [(
        ServiceName::new("web").expect("name"),
        Entry {
            path,
            registration: Registration::decode(registration("host-n1", 8001).as_bytes())
                .expect("registration"),
            targets: nerve::config::ReportTargets::default(),
        },
    )]
    .into();
    for (which, what) in FAILURES {
        let (metrics, _) = nerve::metrics::Metrics::new();
        let mut reporter = EtcdReporter::new(
            EtcdReporterConfig {
                settings: pki.settings(vec![endpoint.clone()], which),
                instance_id: InstanceId::new("host-n1").expect("id"),
                lease_ttl: Duration::from_secs(10),
                reconcile_interval: Duration::from_secs(10),
            },
            nerve::status::StatusHandle::new("host-n1".into(), Default::default()),
            metrics,
        );
        // Dial and request timeouts bound it: an error, never a hang.
        let result = tokio::time::timeout(TIMEOUT, reporter.sync(&desired))
            .await
            .unwrap_or_else(|_| panic!("{what}: the sync hung"));
        let error = result.expect_err(what);
        let chain = error_chain(&error);
        assert!(
            chain.contains(&endpoint),
            "{what}: names the endpoint: {chain}"
        );
    }
}
