//! The migration runbook of `docs/migration.md`, end to end (issue 20): three provider
//! hosts (a backend and a nerve each) and two consumer hosts (a synapse and a real
//! HAProxy each) start on ZooKeeper only — our binaries in ZooKeeper mode, standing in
//! for the Ruby daemons whose format they speak — and go through every later step with
//! a load generator on each consumer the whole time:
//!
//! 1. ZooKeeper only (the fleet as it is);
//! 2. every nerve reports to ZooKeeper and etcd (make-before-break, host by host);
//! 3. every synapse reads both (`multi` + `union`), host by host;
//! 4. every synapse reads etcd only, host by host;
//! 5. every nerve reports to etcd only, host by host;
//! 6. ZooKeeper is stopped.
//!
//! Asserted: no failed request on either consumer across the whole run, and after every
//! step both consumers route exactly the three providers.

use std::time::Duration;

use integration_tests::{
    eventually, loopback, Backend, Etcd, InProcessNerve, InProcessSynapse, Load, LoadOptions,
    World, ZooKeeper, ROUTE_TIMEOUT,
};
use synapse::status::Source;

const ZK_DIR: &str = "/nerve/services/web/services";
const ETCD_DIR: &str = "/smartstack/web";
const PROVIDERS: [&str; 3] = ["p1", "p2", "p3"];
/// Traffic through each intermediate state, after each host's change.
const SOAK: Duration = Duration::from_secs(2);

struct Registries {
    zk: String,
    etcd: String,
}

/// nerve's config for provider `id` on `port`, reporting to `reporters`.
fn nerve_config(r: &Registries, id: &str, port: u16, reporters: &[&str]) -> String {
    // `zk_*` keys belong with the `zookeeper` reporter (nerve refuses them without it).
    let zk_keys = if reporters.contains(&"zookeeper") {
        format!(r#""zk_hosts": ["{}"], "zk_path": "{ZK_DIR}","#, r.zk)
    } else {
        String::new()
    };
    format!(
        r#"{{"instance_id": "{id}", "lease_ttl": 10, "reconcile_interval": 5,
            "etcd": {{"endpoints": ["{etcd}"]}},
            "services": {{"web": {{"host": "127.0.0.1", "port": {port},
              "check_interval": 0.2,
              "checks": [{{"type": "http", "uri": "/", "timeout": 0.5, "rise": 1, "fall": 1}}],
              "reporter_type": {reporters},
              {zk_keys} "etcd_path": "{ETCD_DIR}"}}}}}}"#,
        etcd = r.etcd,
        reporters = serde_json::to_string(reporters).unwrap(),
    )
}

fn zk_discovery(r: &Registries) -> String {
    format!(
        r#"{{"method": "zookeeper", "hosts": ["{}"], "path": "{ZK_DIR}"}}"#,
        r.zk
    )
}

fn etcd_discovery(r: &Registries) -> String {
    format!(
        r#"{{"method": "etcd", "hosts": ["{}"], "path": "{ETCD_DIR}"}}"#,
        r.etcd
    )
}

fn union_discovery(r: &Registries) -> String {
    format!(
        r#"{{"method": "multi", "resolver": {{"method": "union"}},
            "watchers": {{"zookeeper": {}, "etcd": {}}}}}"#,
        zk_discovery(r),
        etcd_discovery(r)
    )
}

struct Provider {
    backend: Backend,
    nerve: InProcessNerve,
}

impl Provider {
    /// Replaces this host's nerve make-before-break: the new one runs beside the old one
    /// until `registered` says its registrations are in place; then the old one stops
    /// cleanly (deleting its own).
    async fn swap_nerve<F, Fut>(&mut self, config: &str, registered: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let new = InProcessNerve::start(config);
        eventually(ROUTE_TIMEOUT, registered).await;
        let old = std::mem::replace(&mut self.nerve, new);
        old.terminate().await;
    }
}

struct Consumer {
    world: World,
    synapse: Option<InProcessSynapse>,
    load: Option<Load>,
}

impl Consumer {
    /// Replaces this host's synapse with one on `discovery`. HAProxy keeps running on
    /// the config it has meanwhile (the seed's deployment: HAProxy outlives synapse).
    /// Returns once the new synapse has applied the three providers from `source`.
    async fn switch(&mut self, discovery: &str, source: Source) {
        if let Some(old) = self.synapse.take() {
            old.stop().await;
        }
        let new = InProcessSynapse::start(&self.world.config(discovery, ""));
        eventually(ROUTE_TIMEOUT, || async {
            let summary = new.counters.services.summaries();
            let web = summary.iter().find(|s| s.service == "web");
            match web.map(|s| (s.source, s.servers)) {
                Some((Some(got), Some(3))) if got == source => Ok(()),
                other => Err(format!("web: {other:?}, want {source:?} with 3 servers")),
            }
        })
        .await;
        self.synapse = Some(new);
    }
}

/// Both consumers route exactly the three providers.
async fn all_route_the_providers(consumers: &[Consumer]) {
    for c in consumers {
        c.world.wait_answering(&PROVIDERS).await;
        // The file follows what HAProxy runs (a runtime change is written after it is
        // applied): one server per provider there too.
        eventually(ROUTE_TIMEOUT, || async {
            let cfg = c.world.haproxy_cfg();
            let servers = cfg
                .lines()
                .filter(|l| l.trim_start().starts_with("server "))
                .count();
            (servers == 3)
                .then_some(())
                .ok_or(format!("{servers} servers, want 3:\n{cfg}"))
        })
        .await;
    }
}

/// Registrations in ZooKeeper below the service's directory.
async fn zk_count(zk: &zookeeper_client::Client) -> usize {
    zk.list_children(ZK_DIR).await.map_or(0, |c| c.len())
}

/// Registrations in etcd below the service's directory.
async fn etcd_count(etcd: &Etcd) -> usize {
    let mut client = etcd.client().await;
    client
        .get(
            format!("{ETCD_DIR}/"),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map(|r| r.kvs().len())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_moves_from_zookeeper_to_etcd_without_a_failed_request() {
    integration_tests::init_tracing();
    let mut zk = Some(ZooKeeper::start().await);
    let etcd = Etcd::start().await;
    let r = Registries {
        zk: zk.as_ref().map(ZooKeeper::address).unwrap_or_default(),
        etcd: etcd.settings().endpoints[0].clone(),
    };
    let started = tokio::time::Instant::now();
    let mut steps: Vec<(String, Duration)> = Vec::new();
    let step = |name: &str, steps: &mut Vec<(String, Duration)>| {
        steps.push((name.to_owned(), started.elapsed()));
    };

    // 1. The fleet as it is: ZooKeeper only.
    let mut providers = Vec::new();
    for id in PROVIDERS {
        let backend = Backend::start(id).await;
        let nerve = InProcessNerve::start(&nerve_config(&r, id, backend.port(), &["zookeeper"]));
        providers.push(Provider { backend, nerve });
    }
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let mut world = World::new();
        let synapse = InProcessSynapse::start(&world.config(&zk_discovery(&r), ""));
        world.start_haproxy().await;
        consumers.push(Consumer {
            world,
            synapse: Some(synapse),
            load: None,
        });
    }
    all_route_the_providers(&consumers).await;
    for c in &consumers {
        let s = c.synapse.as_ref().expect("synapse");
        let summary = s.counters.services.summaries();
        assert_eq!(
            summary[0].source,
            Some(Source::Zookeeper),
            "routed from ZooKeeper"
        );
    }
    let zk_client = zk.as_ref().expect("zk").client().await;
    let options = LoadOptions {
        rate: 25,
        timeout: Duration::from_secs(2),
        max_requests: 25 * 900,
        max_duration: Duration::from_secs(900),
    };
    for c in &mut consumers {
        c.load = Some(Load::start(loopback(c.world.port), options));
    }
    step("1. ZooKeeper only", &mut steps);

    // 2. Dual registration, one provider host at a time.
    for (i, p) in providers.iter_mut().enumerate() {
        let config = nerve_config(&r, PROVIDERS[i], p.backend.port(), &["zookeeper", "etcd"]);
        let (etcd, zk_client) = (&etcd, &zk_client);
        let prefix = format!("{}_", PROVIDERS[i]);
        let prefix = &prefix;
        // Registered in both before the old nerve goes: its key in etcd, and a second
        // node (the new nerve's) beside the old one in ZooKeeper.
        p.swap_nerve(&config, || async move {
            let n = etcd_count(etcd).await;
            let nodes = zk_client.list_children(ZK_DIR).await.map_or(0, |c| {
                c.iter().filter(|c| c.starts_with(prefix.as_str())).count()
            });
            (n > i && nodes == 2).then_some(()).ok_or(format!(
                "{n} keys in etcd, {nodes} nodes of {prefix} in ZooKeeper"
            ))
        })
        .await;
        all_route_the_providers(&consumers).await;
        tokio::time::sleep(SOAK).await;
    }
    eventually(ROUTE_TIMEOUT, || async {
        let (e, z) = (etcd_count(&etcd).await, zk_count(&zk_client).await);
        (e == 3 && z == 3)
            .then_some(())
            .ok_or(format!("{e} keys in etcd, {z} nodes in ZooKeeper"))
    })
    .await;
    step("2. nerves report to ZooKeeper and etcd", &mut steps);

    // 3. Consumers read both, one host at a time.
    for c in &mut consumers {
        c.switch(&union_discovery(&r), Source::Mixed).await;
        c.world.wait_answering(&PROVIDERS).await;
        tokio::time::sleep(SOAK).await;
    }
    all_route_the_providers(&consumers).await;
    step("3. synapses read the union", &mut steps);

    // 4. Consumers read etcd only, one host at a time.
    for c in &mut consumers {
        c.switch(&etcd_discovery(&r), Source::Etcd).await;
        c.world.wait_answering(&PROVIDERS).await;
        tokio::time::sleep(SOAK).await;
    }
    all_route_the_providers(&consumers).await;
    step("4. synapses read etcd only", &mut steps);

    // 5. Providers report to etcd only, one host at a time. The new nerve's etcd key is
    // in place before the old one (and its ZooKeeper node) goes.
    for (i, p) in providers.iter_mut().enumerate() {
        let config = nerve_config(&r, PROVIDERS[i], p.backend.port(), &["etcd"]);
        let etcd = &etcd;
        p.swap_nerve(&config, || async move {
            // The old nerve's key and the new one's.
            let n = etcd_count(etcd).await;
            (n >= 4).then_some(()).ok_or(format!("{n} keys in etcd"))
        })
        .await;
        all_route_the_providers(&consumers).await;
        tokio::time::sleep(SOAK).await;
    }
    // The old nerves deleted their ZooKeeper nodes on their clean stops.
    eventually(ROUTE_TIMEOUT, || async {
        let (e, z) = (etcd_count(&etcd).await, zk_count(&zk_client).await);
        (e == 3 && z == 0)
            .then_some(())
            .ok_or(format!("{e} keys in etcd, {z} nodes in ZooKeeper"))
    })
    .await;
    step("5. nerves report to etcd only", &mut steps);

    // 6. ZooKeeper goes.
    drop(zk_client);
    drop(zk.take());
    tokio::time::sleep(SOAK).await;
    all_route_the_providers(&consumers).await;
    for c in &consumers {
        let s = c.synapse.as_ref().expect("synapse");
        let summary = s.counters.services.summaries();
        assert_eq!(summary[0].source, Some(Source::Etcd), "routed from etcd");
    }
    step("6. ZooKeeper stopped", &mut steps);

    let mut total = (0, 0);
    for (i, c) in consumers.iter_mut().enumerate() {
        let report = c.load.take().expect("load").stop().await;
        eprintln!(
            "consumer {i}: {} requests, {} ok, {} failed, by backend {:?}",
            report.sent,
            report.ok(),
            report.failed(),
            report.ok_by_backend
        );
        assert_eq!(
            report.failed(),
            0,
            "consumer {i} saw failed requests: {:?}",
            report.failures
        );
        assert!(report.ok() > 0);
        for id in PROVIDERS {
            assert!(
                report.ok_by_backend.get(id).copied().unwrap_or(0) > 0,
                "{id} got traffic"
            );
        }
        total.0 += report.sent;
        total.1 += report.failed();
    }
    for (name, at) in &steps {
        eprintln!("step {name}: done at {:.1} s", at.as_secs_f64());
    }
    eprintln!(
        "migration: {} requests, {} failed, {:.1} s",
        total.0,
        total.1,
        started.elapsed().as_secs_f64()
    );
    for c in &mut consumers {
        if let Some(s) = c.synapse.take() {
            s.stop().await;
        }
    }
    drop(providers);
}
