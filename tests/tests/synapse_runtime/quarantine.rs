//! Issue 17, a blast radius of one: what HAProxy would refuse (a registration, a static
//! server, the operator's own lines) is quarantined or held back, and the rest is routed.

use std::time::Duration;

use integration_tests::{eventually, free_port, Backend, InProcessSynapse as Synapse};

use crate::world::{generation, routes_to, three_backends, World};
use crate::TIMEOUT;

impl World {
    /// Puts a raw value under `instance`'s key (values the test types would refuse).
    async fn put_raw(&self, instance: &str, value: &str) {
        self.client
            .kv_client()
            .put(self.key(instance), value, None)
            .await
            .expect("put");
    }

    /// `haproxy -c` on the file synapse left on disk.
    fn file_passes_check(&self) -> Result<(), String> {
        integration_tests::haproxy::check_config(&self.path("haproxy.cfg"))
    }

    /// Records every version of haproxy.cfg (read every 5 ms) until `stop` is cancelled.
    fn record_file_versions(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let path = self.path("haproxy.cfg");
        tokio::spawn(async move {
            let mut versions: Vec<String> = Vec::new();
            while !stop.is_cancelled() {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    if versions.last() != Some(&text) {
                        versions.push(text);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            versions
        })
    }
}

/// The quarantined servers of `web` in synapse's `/status`: name → HAProxy's error.
fn quarantined(synapse: &Synapse) -> std::collections::BTreeMap<String, String> {
    quarantined_in(synapse, "web")
}

/// The quarantined servers of `service` in synapse's `/status`.
fn quarantined_in(synapse: &Synapse, service: &str) -> std::collections::BTreeMap<String, String> {
    let status = synapse.counters.services.snapshot();
    status.services[service]
        .quarantined
        .iter()
        .map(|q| (q.name.clone(), q.error.clone()))
        .collect()
}

/// Issue 17, a blast radius of one: registrations HAProxy would refuse never break the
/// host. With the default config (`do_checks` unset): an out-of-range option is refused
/// by the decoder (counted), a host name HAProxy cannot resolve is quarantined (HAProxy's
/// error line in `/status`); a valid registration put after them is routed through the
/// runtime API without a reload; the file on disk passes `haproxy -c` throughout; a
/// reload and a cold restart of HAProxy from it work; fixing the value in etcd routes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registrations_are_quarantined_and_the_rest_is_routed() {
    let w = World::start("quarantine").await;
    let port = free_port();
    let (a, b, c) = three_backends().await;
    w.register("host-a", &a).await;
    let (synapse, haproxy) = w
        .with_haproxy(port, |t| {
            t.replace(
                r#""discovery": {"method": "etcd","#,
                r#""discovery": {"method": "etcd", "allow_hostnames": true,"#,
            )
        })
        .await;
    routes_to(port, &["a"]).await;
    let before = generation(haproxy.master()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let recorder = w.record_file_versions(stop.clone());

    // Two refused registrations, then a valid one.
    let bad_option = format!(
        r#"{{"host":"127.0.0.1","port":{},"name":"bad-option","haproxy_server_options":"check inter 0"}}"#,
        c.port()
    );
    w.put_raw("bad-option", &bad_option).await;
    let bad_dns = format!(
        r#"{{"host":"no-such-host.invalid","port":{},"name":"bad-dns"}}"#,
        c.port()
    );
    w.put_raw("bad-dns", &bad_dns).await;
    let put = tokio::time::Instant::now();
    let dns_server = format!("bad-dns_no-such-host.invalid:{}", c.port());
    eventually(TIMEOUT, || async {
        let q = quarantined(&synapse);
        match q.get(&dns_server) {
            Some(e) if e.contains("could not resolve") => Ok(()),
            _ => Err(format!("quarantined: {q:?}")),
        }
    })
    .await;
    let quarantined_after = put.elapsed();
    assert_eq!(synapse.counters.rejected().get("invalid_option"), Some(&1));
    let put = tokio::time::Instant::now();
    w.register("host-b", &b).await;
    routes_to(port, &["a", "b"]).await;
    let routed_after = put.elapsed();
    // Through the runtime API: HAProxy did not reload.
    assert_eq!(generation(haproxy.master()).await, before);
    // Reported: the metric, labelled by service.
    let summary = synapse.counters.services.summaries();
    assert_eq!(summary[0].quarantined, 1, "{summary:?}");
    // The file on disk holds the valid servers only (written right after the runtime
    // pass) and passes the check.
    eventually(TIMEOUT, || async { w.server_lines().len() == 2 }).await;
    w.file_passes_check()
        .expect("haproxy -c on the file on disk");
    let lines = w.server_lines();
    assert!(!lines.iter().any(|l| l.contains("bad-")), "{lines:?}");
    // A reload and a cold restart from that file work.
    haproxy.reload().await.expect("reload");
    routes_to(port, &["a", "b"]).await;
    haproxy.stop().await;
    let _ = std::fs::remove_file(w.path("master.sock"));
    let _ = std::fs::remove_file(w.path("haproxy.pid"));
    let haproxy = w.start_haproxy().await;
    routes_to(port, &["a", "b"]).await;

    // Fixing the values in etcd routes them.
    w.put_raw(
        "bad-dns",
        &bad_dns.replace("no-such-host.invalid", "127.0.0.1"),
    )
    .await;
    w.put_raw("bad-option", &bad_option.replace("inter 0", "inter 300ms"))
        .await;
    let fixed = tokio::time::Instant::now();
    routes_to(port, &["a", "b", "c"]).await;
    println!(
        "quarantine: quarantined {quarantined_after:?} after the put, next valid one routed \
         {routed_after:?} after its put (0 reloads), fixed value routed {:?} after its put; \
         check failures {}",
        fixed.elapsed(),
        synapse.get(|c| &c.check_failures)
    );
    eventually(TIMEOUT, || async { quarantined(&synapse).is_empty() }).await;
    w.file_passes_check()
        .expect("haproxy -c on the file on disk");
    // No version of the file synapse wrote meanwhile fails the check.
    stop.cancel();
    let versions = recorder.await.expect("recorder");
    for (i, text) in versions.iter().enumerate() {
        let copy = w.path(&format!("version-{i}.cfg"));
        std::fs::write(&copy, text).expect("copy");
        if let Err(e) = integration_tests::haproxy::check_config(&copy) {
            panic!("version {i} of haproxy.cfg fails haproxy -c: {e}\n{text}");
        }
    }
    println!(
        "quarantine: {} versions of haproxy.cfg, all pass haproxy -c",
        versions.len()
    );
    assert!(synapse.is_running());
    drop(haproxy);
    synapse.stop().await;
}

/// Issue 17: with `do_checks` unset, the operator's own lines breaking the check (the
/// `errorfile` the defaults name disappears) keep the last good file on disk, and
/// traffic flows: a new server still goes in through the runtime API. Once the file is
/// back, the new render is written, and it passes `haproxy -c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_lines_breaking_the_check_keep_the_last_good_file() {
    let w = World::start("operator").await;
    let port = free_port();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let errorfile = w.path("503.http");
    let page = "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\ndown\n";
    std::fs::write(&errorfile, page).expect("errorfile");
    w.register("host-a", &a).await;
    let (synapse, haproxy) = w
        .with_haproxy(port, |t| {
            t.replace(
                r#""retries 2","#,
                &format!(r#""retries 2", "errorfile 503 {}","#, errorfile.display()),
            )
        })
        .await;
    routes_to(port, &["a"]).await;
    let good = std::fs::read_to_string(w.path("haproxy.cfg")).expect("file");

    std::fs::remove_file(&errorfile).expect("remove errorfile");
    let checks = synapse.get(|c| &c.check_failures);
    w.register("host-b", &b).await;
    eventually(TIMEOUT, || async {
        synapse.get(|c| &c.check_failures) > checks
    })
    .await;
    routes_to(port, &["a", "b"]).await;
    assert_eq!(
        std::fs::read_to_string(w.path("haproxy.cfg")).expect("file"),
        good,
        "a file that fails the check was written"
    );
    // Nobody is blamed for the operator's lines.
    assert!(quarantined(&synapse).is_empty());

    let failed_checks = synapse.get(|c| &c.check_failures) - checks;
    std::fs::write(&errorfile, page).expect("errorfile");
    let back = tokio::time::Instant::now();
    eventually(TIMEOUT, || async { w.server_lines().len() == 2 }).await;
    println!(
        "operator lines: {failed_checks} failed checks, file unchanged, b routed meanwhile; \
         written {:?} after the errorfile returned",
        back.elapsed()
    );
    w.file_passes_check()
        .expect("haproxy -c on the file on disk");
    routes_to(port, &["a", "b"]).await;
    assert!(synapse.is_running());
    drop(haproxy);
    synapse.stop().await;
}

/// Issue 17, every source: a static `default_servers` entry HAProxy refuses (a host name
/// that does not resolve) is quarantined like a registration; the service's other static
/// server and the etcd service are routed, and the file passes `haproxy -c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_server_haproxy_refuses_is_quarantined() {
    let w = World::start("quarantine-static").await;
    let (port, static_port) = (free_port(), free_port());
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    w.register("host-a", &a).await;
    let (synapse, _haproxy) = w
        .with_haproxy(port, |t| {
            t.replace(
                r#""services": {"web": {"#,
                &format!(
                    r#""services": {{"static": {{"discovery": {{"method": "base"}},
                       "default_servers": [
                         {{"name": "good", "host": "127.0.0.1", "port": {}}},
                         {{"name": "bad", "host": "no-such-host.invalid", "port": 80}}],
                       "haproxy": {{"port": {static_port}}}}},
                       "web": {{"#,
                    b.port()
                ),
            )
        })
        .await;
    routes_to(port, &["a"]).await;
    routes_to(static_port, &["b"]).await;
    eventually(TIMEOUT, || async {
        let q = quarantined_in(&synapse, "static");
        match q.get("bad_no-such-host.invalid:80") {
            Some(e) if e.contains("could not resolve") => Ok(()),
            _ => Err(format!("quarantined: {q:?}")),
        }
    })
    .await;
    w.file_passes_check()
        .expect("haproxy -c on the file on disk");
    assert!(synapse.is_running());
    synapse.stop().await;
}
