//! Who may register as whom (issue #18), through real etcd into synapse's file output:
//! a key that starts with an instance id must carry that `name`; when two entries claim
//! one server name the identity-checked one wins and the conflict is counted once;
//! `strict_keys` accepts only nerve's key shape.

use std::path::Path;
use std::time::Duration;

use common::{InstanceId, ServiceName, ServicePath};
use integration_tests::{eventually, init_tracing, Etcd, InProcessSynapse as Synapse, Workdir};

const TIMEOUT: Duration = Duration::from_secs(30);

fn value(name: &str, host: &str, weight: u16) -> String {
    format!(r#"{{"host":"{host}","port":8080,"name":"{name}","weight":{weight}}}"#)
}

/// `(name, weight)` of every entry in `<out>/<service>.json`.
fn entries(out: &Path, service: &str) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(out.join(format!("{service}.json"))).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["name"].as_str().unwrap_or("").to_owned(),
                e["weight"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_is_checked_conflicts_resolved_and_strict_keys_enforced() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let mut kv = client.kv_client();
    let dir = Workdir::new();
    let out = dir.join("out");
    let (web, strict) = ("/it/id/web", "/it/id/strict");
    let nerve_key = |path: &str, instance: &str, service: &str| {
        ServicePath::new(path).expect("path").nerve_key(
            &InstanceId::new(instance).expect("id"),
            &ServiceName::new(service).expect("name"),
            7,
        )
    };
    let puts = [
        // Foreign shape, first segment an instance id, another name: rejected.
        (
            format!("{web}/host-a/anything"),
            value("host-b", "10.0.0.2", 1),
        ),
        // The same server name twice: nerve's (weight 5) beats a one-segment key's (9),
        // whichever sorts first.
        (format!("{web}/0-imposter"), value("host-c", "10.0.0.3", 9)),
        (
            nerve_key(web, "host-c", "web"),
            value("host-c", "10.0.0.3", 5),
        ),
        // A plain, unconflicted foreign entry stays accepted.
        (format!("{web}/legacy"), value("host-d", "10.0.0.4", 1)),
        // strict_keys: only the nerve-shaped one.
        (format!("{strict}/legacy"), value("host-e", "10.0.0.5", 1)),
        (
            nerve_key(strict, "host-f", "strict"),
            value("host-f", "10.0.0.6", 1),
        ),
    ];
    for (key, value) in &puts {
        kv.put(key.as_str(), value.as_str(), None)
            .await
            .expect("put");
    }
    let discovery = |path: &str, extra: &str| {
        format!(
            r#"{{"discovery": {{"method": "etcd", "hosts": ["{ep}"], "path": "{path}"{extra}}}}}"#,
            ep = etcd.endpoint()
        )
    };
    let synapse = Synapse::start(&format!(
        r#"{{"services": {{"web": {}, "strict": {}}},
            "file_output": {{"output_directory": "{}"}}}}"#,
        discovery(web, ""),
        discovery(strict, r#", "strict_keys": true"#),
        out.display()
    ));
    eventually(TIMEOUT, || async {
        let (w, s) = (entries(&out, "web"), entries(&out, "strict"));
        if w.len() == 2 && s.len() == 1 {
            Ok((w, s))
        } else {
            Err(format!("web {w:?}, strict {s:?}"))
        }
    })
    .await;
    assert_eq!(
        entries(&out, "web"),
        [("host-c".to_owned(), 5), ("host-d".to_owned(), 1)]
    );
    assert_eq!(entries(&out, "strict"), [("host-f".to_owned(), 1)]);
    let rejected = synapse.counters.rejected();
    assert_eq!(rejected.get("identity_mismatch"), Some(&1), "{rejected:?}");
    assert_eq!(rejected.get("identity_conflict"), Some(&1), "{rejected:?}");
    assert_eq!(rejected.get("foreign_key"), Some(&1), "{rejected:?}");
    // A later, unrelated change republishes: the standing conflict is not counted again.
    kv.put(format!("{web}/late"), value("host-g", "10.0.0.7", 1), None)
        .await
        .expect("put");
    eventually(TIMEOUT, || async { entries(&out, "web").len() == 3 }).await;
    assert_eq!(
        synapse.counters.rejected().get("identity_conflict"),
        Some(&1)
    );
    synapse.stop().await;
}
