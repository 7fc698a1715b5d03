//! Registration behaviour of nerve in-process against a real etcd and real services.

use std::time::Duration;

use integration_tests::{eventually, free_port, init_tracing, loopback, Backend, Etcd, Workdir};
use serde_json::json;

use crate::support::{config, http_service, keys, revision, wait_keys, InProcess, INTERVAL, TTL};

/// Generous slack on top of what a timing should take, for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(3);

fn within(checks: u32) -> Duration {
    Duration::from_secs_f64(f64::from(checks) * INTERVAL) + SLACK
}

#[tokio::test]
async fn registers_when_healthy_and_follows_health() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let backend = Backend::start("web-1").await;
    let nerve = InProcess::start(&config(
        &etcd.endpoints(),
        "host-1",
        json!({"web": http_service(backend.port(), "/svc/web", 3, 2)}),
    ));

    let kvs = wait_keys(&client, "/svc/web/", 1, within(3)).await;
    // rise 3: registered only after three successful checks.
    assert!(
        backend.health_checks() >= 3,
        "{} checks",
        backend.health_checks()
    );
    let kv = &kvs[0];
    assert_ne!(kv.lease, 0, "the key must be attached to a lease");
    assert_eq!(kv.key, format!("/svc/web/host-1/web_{:016x}", kv.lease));
    assert_eq!(
        kv.value,
        format!(
            r#"{{"host":"127.0.0.1","port":{},"name":"host-1"}}"#,
            backend.port()
        )
    );
    // The status snapshot catches up with what is in etcd.
    let status = eventually(SLACK, || async {
        let status = nerve.status.borrow().clone();
        if status.registry.keys.contains_key(&kv.key) {
            Ok(status)
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await;
    assert_eq!(status.registry.lease_id, Some(kv.lease));
    assert_eq!(status.registry.keys[&kv.key], "web");
    assert!(status.services["web"].healthy && status.services["web"].reported);

    backend.set_healthy(false);
    wait_keys(&client, "/svc/web/", 0, within(2)).await;
    backend.set_healthy(true);
    let again = wait_keys(&client, "/svc/web/", 1, within(3)).await;
    // Same lease, so the same key.
    assert_eq!(again[0].key, kv.key);

    nerve.stop().await;
    assert!(keys(&client, "/svc/").await.unwrap().is_empty());
}

#[tokio::test]
async fn steady_state_makes_no_writes() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let backend = Backend::start("web-1").await;
    let nerve = InProcess::start(&config(
        &etcd.endpoints(),
        "host-1",
        json!({"web": http_service(backend.port(), "/svc/web", 1, 1)}),
    ));
    let before = wait_keys(&client, "/svc/web/", 1, within(1)).await;
    let rev = revision(&client).await;
    let checks = backend.health_checks();
    // An observation window, not a synchronisation: more than 10 check intervals, three
    // lease keep-alives and two read-backs of the keys.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        backend.health_checks() >= checks + 10,
        "checks stopped running"
    );
    assert_eq!(
        revision(&client).await,
        rev,
        "nerve wrote to etcd in a steady state"
    );
    let after = keys(&client, "/svc/web/").await.unwrap();
    assert_eq!(after, before);
    nerve.stop().await;
}

#[tokio::test]
async fn repairs_changes_made_behind_its_back() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut writer = client.clone();
    let backend = Backend::start("web-1").await;
    let nerve = InProcess::start(&config(
        &etcd.endpoints(),
        "host-1",
        json!({"web": http_service(backend.port(), "/svc/web", 1, 1)}),
    ));
    let original = wait_keys(&client, "/svc/web/", 1, within(1))
        .await
        .remove(0);
    let restored = || async {
        let kvs = keys(&client, "/svc/web/").await?;
        match kvs.as_slice() {
            [kv] if kv.key == original.key
                && kv.value == original.value
                && kv.lease == original.lease =>
            {
                Ok(())
            }
            _ => Err(format!("{kvs:?}")),
        }
    };

    // Deleted by someone else: put back at the next read-back (every 1 s here).
    writer.delete(original.key.as_str(), None).await.unwrap();
    eventually(SLACK + Duration::from_secs(1), restored).await;

    // Overwritten without the lease: restored with the value and the lease.
    writer
        .put(
            original.key.as_str(),
            r#"{"host":"10.9.9.9","port":1,"name":"x"}"#,
            None,
        )
        .await
        .unwrap();
    eventually(SLACK + Duration::from_secs(1), restored).await;

    // A stray key on nerve's lease is removed.
    let stray = "/svc/web/host-1/stray_0000000000000001";
    writer
        .put(
            stray,
            "junk",
            Some(etcd_client::PutOptions::new().with_lease(original.lease)),
        )
        .await
        .unwrap();
    eventually(SLACK + Duration::from_secs(1), restored).await;
    nerve.stop().await;
}

#[tokio::test]
async fn maintenance_files_drain_one_service_or_all() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let mut svc_a = http_service(a.port(), "/svc/a", 1, 1);
    svc_a["maintenance_file"] = json!(dir.join("a.down"));
    let mut cfg = config(
        &etcd.endpoints(),
        "host-1",
        json!({"a": svc_a, "b": http_service(b.port(), "/svc/b", 1, 1)}),
    );
    cfg["maintenance_file"] = json!(dir.join("all.down"));
    let nerve = InProcess::start(&cfg);
    wait_keys(&client, "/svc/", 2, within(1)).await;

    dir.write("a.down", "");
    let kvs = wait_keys(&client, "/svc/", 1, within(1)).await;
    assert!(kvs[0].key.starts_with("/svc/b/"), "{kvs:?}");
    assert!(nerve.status.borrow().services["a"].drained);
    std::fs::remove_file(dir.join("a.down")).unwrap();
    wait_keys(&client, "/svc/", 2, within(1)).await;

    dir.write("all.down", "");
    wait_keys(&client, "/svc/", 0, within(1)).await;
    std::fs::remove_file(dir.join("all.down")).unwrap();
    wait_keys(&client, "/svc/", 2, within(1)).await;
    nerve.stop().await;
}

#[tokio::test]
async fn tcp_and_exec_checks_gate_registration() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let ready = dir.write("ready", "");
    let mut backend = Backend::start("db").await;
    let service = json!({
        "host": "127.0.0.1",
        "port": backend.port(),
        "etcd_path": "/svc/db",
        "check_interval": INTERVAL,
        "checks": [
            {"type": "tcp", "timeout": 1},
            {"type": "exec", "command": ["test", "-e", ready], "timeout": 5},
        ],
    });
    let nerve = InProcess::start(&config(&etcd.endpoints(), "host-1", json!({"db": service})));
    wait_keys(&client, "/svc/db/", 1, within(1)).await;
    std::fs::remove_file(&ready).unwrap();
    wait_keys(&client, "/svc/db/", 0, within(1)).await;
    dir.write("ready", "");
    wait_keys(&client, "/svc/db/", 1, within(1)).await;
    backend.kill().await;
    wait_keys(&client, "/svc/db/", 0, within(1)).await;
    nerve.stop().await;
}

#[tokio::test]
async fn two_nerves_with_one_instance_id_keep_their_own_keys() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let backend = Backend::start("web").await;
    let cfg = config(
        &etcd.endpoints(),
        "host-1",
        json!({"web": http_service(backend.port(), "/svc/web", 1, 1)}),
    );
    let first = InProcess::start(&cfg);
    let second = InProcess::start(&cfg);
    let both = wait_keys(&client, "/svc/web/", 2, within(1)).await;
    assert_ne!(both[0].lease, both[1].lease);
    let second_lease = eventually(SLACK, || async {
        let lease = second.status.borrow().registry.lease_id;
        lease.filter(|l| both.iter().any(|kv| kv.lease == *l))
    })
    .await;
    first.stop().await;
    let left = wait_keys(&client, "/svc/web/", 1, SLACK).await;
    assert_eq!(left[0].lease, second_lease, "the wrong nerve's key went");
    // And it stays: still there, untouched, after more than a lease TTL.
    tokio::time::sleep(Duration::from_secs(TTL + 1)).await;
    assert_eq!(keys(&client, "/svc/web/").await.unwrap(), left);
    second.stop().await;
}

#[tokio::test]
async fn admin_endpoint_serves_status_metrics_and_readiness() {
    init_tracing();
    let etcd = Etcd::start().await;
    let backend = Backend::start("web").await;
    let port = free_port();
    let mut cfg = config(
        &etcd.endpoints(),
        "host-1",
        json!({"web": http_service(backend.port(), "/svc/web", 1, 1)}),
    );
    cfg["admin_listen"] = json!(format!("127.0.0.1:{port}"));
    let nerve = InProcess::start(&cfg);
    let addr = loopback(port);
    let status = eventually(within(1), || async {
        let (code, body) = common::admin::fetch(addr, "/status")
            .await
            .map_err(|e| e.to_string())?;
        let doc: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
        // The service wants to be registered, and the reporter has written it.
        let written = doc["registry"]["keys"].as_object().map_or(0, |k| k.len());
        if code == 200 && doc["services"]["web"]["reported"] == true && written == 1 {
            Ok(doc)
        } else {
            Err(format!("{code} {body}"))
        }
    })
    .await;
    assert_eq!(status["instance_id"], "host-1");
    assert_eq!(status["registry"]["connected"], true);
    let keys = status["registry"]["keys"].as_object().expect("keys");
    assert!(
        keys.keys().all(|k| k.starts_with("/svc/web/host-1/web_")),
        "{keys:?}"
    );
    assert_eq!(keys.len(), 1);
    let (code, _) = common::admin::fetch(addr, "/readyz").await.unwrap();
    assert_eq!(code, 200);
    let (code, metrics) = common::admin::fetch(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(
        metrics.contains(r#"nerve_service_healthy{service="web"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains("nerve_registrations 1"), "{metrics}");
    nerve.stop().await;
}

/// upstream's `redis` check against a real redis-server: registered while it answers
/// PING and EXISTS, deregistered when it stops, registered again when it is back.
#[tokio::test]
async fn redis_check_follows_a_real_redis_server() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let redis = integration_tests::RedisServer::start().await;
    let port = redis.port();
    let service = json!({
        "host": "127.0.0.1",
        "port": port,
        "etcd_path": "/svc/cache",
        "check_interval": INTERVAL,
        "checks": [{"type": "redis", "timeout": 1, "rise": 1, "fall": 1}],
    });
    let nerve = InProcess::start(&config(
        &etcd.endpoints(),
        "host-1",
        json!({"cache": service}),
    ));
    wait_keys(&client, "/svc/cache/", 1, within(1)).await;
    drop(redis);
    wait_keys(&client, "/svc/cache/", 0, within(1)).await;
    let _redis = integration_tests::RedisServer::start_on(port).await;
    wait_keys(&client, "/svc/cache/", 1, within(1)).await;
    nerve.stop().await;
}

/// Something that accepts connections but is not redis (an HTTP backend) fails it.
#[tokio::test]
async fn redis_check_fails_against_a_server_that_is_not_redis() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let backend = Backend::start("web").await;
    let services = json!({
        "web": {"host": "127.0.0.1", "port": backend.port(), "etcd_path": "/svc/web",
                "check_interval": INTERVAL,
                "checks": [{"type": "tcp", "timeout": 1}]},
        "fake": {"host": "127.0.0.1", "port": backend.port(), "etcd_path": "/svc/fake",
                 "check_interval": INTERVAL,
                 "checks": [{"type": "redis", "timeout": 1}]},
    });
    let nerve = InProcess::start(&config(&etcd.endpoints(), "host-1", services));
    // The tcp check registers; by then the redis check has run many times.
    wait_keys(&client, "/svc/web/", 1, within(1)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(keys(&client, "/svc/fake/").await.unwrap().is_empty());
    nerve.stop().await;
}

/// upstream's `rabbitmq` check against a real broker: with the right credentials the
/// service registers (a message was published and read back); with a wrong password it
/// never does; when the broker dies the registration goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_check_follows_a_real_broker_and_its_credentials() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut broker = integration_tests::RabbitMq::start().await;
    let service = |path: &str, password: &str| {
        json!({
            "host": "127.0.0.1",
            "port": broker.port(),
            "etcd_path": path,
            "check_interval": INTERVAL,
            "checks": [{"type": "rabbitmq", "username": "guest", "password": password,
                        "timeout": 5}],
        })
    };
    let services =
        json!({"mq": service("/svc/mq", "guest"), "mq-bad": service("/svc/mq-bad", "wrong")});
    let nerve = InProcess::start(&config(&etcd.endpoints(), "host-1", services));
    wait_keys(&client, "/svc/mq/", 1, SLACK * 5).await;
    assert!(keys(&client, "/svc/mq-bad/").await.unwrap().is_empty());
    broker.kill();
    wait_keys(&client, "/svc/mq/", 0, SLACK * 5).await;
    nerve.stop().await;
}

/// airbnb's example etcd service (the compatibility corpus, `nerve-services/01`) as
/// written — `etcd_host`/`etcd_port`, its `etcd_path`, weight 2, its http check with rise
/// 3 — with only its address and etcd pointed at the test's backend and etcd (the corpus
/// names 1.2.3.4 and localhost:4001): registered under its path in SmartStack's format.
#[tokio::test]
async fn the_corpus_etcd_service_registers() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let backend = Backend::start("corpus").await;
    let mut service: serde_json::Value = serde_json::from_str(&common::upstream::corpus_file(
        "nerve-services/01-airbnb-etcd_service1.json",
    ))
    .expect("corpus json");
    let path = service["etcd_path"].as_str().expect("etcd_path").to_owned();
    service["host"] = "127.0.0.1".into();
    service["port"] = backend.port().into();
    service["etcd_host"] = "127.0.0.1".into();
    service["etcd_port"] = etcd.client_addr().port().into();
    let mut nerve_config = config(
        &etcd.endpoints(),
        "host-1",
        json!({"etcd_service1": service}),
    );
    // The service names its own etcd: no top-level one.
    nerve_config.as_object_mut().expect("object").remove("etcd");
    let nerve = InProcess::start(&nerve_config);
    // rise 3 at check_interval 2: registered after three good checks (~6 s).
    let kvs = wait_keys(&client, &format!("{path}/"), 1, Duration::from_secs(30)).await;
    let value: serde_json::Value = serde_json::from_slice(kvs[0].value.as_bytes()).expect("json");
    assert_eq!(
        value,
        json!({"host": "127.0.0.1", "port": backend.port(), "name": "host-1", "weight": 2})
    );
    nerve.stop().await;
}
