//! Zone-aware routing (issue 22), end to end on loopback: real etcd, real nerves that
//! register a `zone` label (one from its config, one from an IMDSv2 on loopback), a
//! real synapse with `prefer_zone`, a real HAProxy and real requests through it.
//!
//! Two zones: `zone-a` (synapse's own, from its config) with a1 and a2, `zone-b` with
//! b1 and b2. Traffic stays in zone-a while it has `min_zone_servers` (2) registered
//! servers, spreads over both zones below that, goes to zone-b when zone-a's servers
//! are all down, and comes back when they recover.

use etcd_client::GetOptions;
use integration_tests::world::{World, ROUTE_TIMEOUT};
use integration_tests::{eventually, Backend, Etcd, InProcessNerve, InProcessSynapse as Synapse};
use synapse::status::ApplyMethod;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PATH: &str = "/it/zone/web";

/// A nerve registering each backend as service `web-<i>` under [`PATH`], with `zone`
/// settings (`"zone": ...` or `"zone_from_imds": true, ...`) given as JSON keys.
fn nerve(
    etcd: &Etcd,
    id: &str,
    backends: &[&Backend],
    zone_keys: serde_json::Value,
) -> InProcessNerve {
    let services: serde_json::Map<String, serde_json::Value> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            (
                format!("web-{i}"),
                serde_json::json!({
                    "host": "127.0.0.1", "port": b.port(), "reporter_type": "etcd",
                    "etcd_path": PATH, "check_interval": 0.2,
                    "checks": [{"type": "http", "uri": "/health", "timeout": 0.2,
                                "rise": 1, "fall": 1}],
                }),
            )
        })
        .collect();
    let mut config = serde_json::json!({
        "instance_id": id,
        "etcd": {"endpoints": [etcd.endpoint()], "dial_timeout": 1, "request_timeout": 1},
        "lease_ttl": 3,
        "admin_listen": null,
        "services": services,
    });
    for (k, v) in zone_keys.as_object().expect("zone keys").clone() {
        config[k] = v;
    }
    InProcessNerve::start(&config.to_string())
}

/// An IMDSv2 on loopback that says the instance is in `zone`: a token by PUT first, and
/// the zone only for a GET carrying that token.
async fn fake_imds(zone: &'static str) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
            let body = if req.starts_with("put /latest/api/token") {
                "imds-token"
            } else if req.starts_with("get /latest/meta-data/placement/availability-zone")
                && req.contains("x-aws-ec2-metadata-token: imds-token")
            {
                zone
            } else {
                ""
            };
            let status = if body.is_empty() {
                "401 Unauthorized"
            } else {
                "200 OK"
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    (format!("http://{addr}"), task)
}

/// The server lines of haproxy.cfg, by the backend id (`a1`, ...) their port belongs to,
/// with whether they are `backup`.
fn backup_flags(w: &World, backends: &[&Backend]) -> Vec<(String, bool)> {
    let cfg = w.haproxy_cfg();
    backends
        .iter()
        .filter_map(|b| {
            let line = cfg.lines().find(|l| {
                l.trim_start().starts_with("server ") && l.contains(&format!(":{} ", b.port()))
            })?;
            Some((
                b.id().to_owned(),
                line.split_whitespace().any(|w| w == "backup"),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_stays_in_zone_and_fails_over_when_the_zone_dies() {
    let mut w = World::new();
    let etcd = Etcd::start().await;
    let (a1, a2, b1, b2) = (
        Backend::start("a1").await,
        Backend::start("a2").await,
        Backend::start("b1").await,
        Backend::start("b2").await,
    );
    let (imds, imds_task) = fake_imds("zone-b").await;
    let _nerve_a = nerve(
        &etcd,
        "host-a",
        &[&a1, &a2],
        serde_json::json!({"zone": "zone-a"}),
    );
    let _nerve_b = nerve(
        &etcd,
        "host-b",
        &[&b1, &b2],
        serde_json::json!({"zone_from_imds": true, "imds_endpoint": imds}),
    );

    let discovery = format!(
        r#"{{"method": "etcd", "path": "{PATH}", "etcd": {{"endpoints": ["{}"]}}}}"#,
        etcd.endpoint()
    );
    // synapse's own zone from its config; the service prefers it while 2 servers are
    // registered there.
    let config = w
        .config(
            &discovery,
            r#", "prefer_zone": true, "min_zone_servers": 2"#,
        )
        .replacen('{', r#"{"zone": "zone-a", "admin_listen": null,"#, 1)
        // The runtime API on (the World's config has the socket but does not use it).
        .replacen(
            r#""do_checks": true,"#,
            &format!(
                r#""do_checks": true, "socket_file_path": "{}","#,
                w.dir.join("admin.sock").display()
            ),
            1,
        );
    let synapse = Synapse::start(&config);
    w.start_haproxy().await;

    // Both zones registered, each nerve with its zone label (host-b's from the IMDS).
    let client = etcd.client().await;
    eventually(ROUTE_TIMEOUT, || {
        let mut client = client.clone();
        async move {
            let got = client
                .get(PATH, Some(GetOptions::new().with_prefix()))
                .await
                .map_err(|e| e.to_string())?;
            let zones: Vec<String> = got
                .kvs()
                .iter()
                .filter_map(|kv| {
                    let v: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
                    Some(format!(
                        "{}:{}",
                        v["name"].as_str()?,
                        v["labels"]["zone"].as_str()?
                    ))
                })
                .collect();
            let want = [
                "host-a:zone-a",
                "host-a:zone-a",
                "host-b:zone-b",
                "host-b:zone-b",
            ];
            if zones == want {
                Ok(())
            } else {
                Err(format!("registered zones {zones:?}, want {want:?}"))
            }
        }
    })
    .await;

    // zone-b as backup: traffic stays in zone-a.
    w.wait_answering(&["a1", "a2"]).await;
    let all = [&a1, &a2, &b1, &b2];
    // The file follows the runtime API within a second (a deferred write), so it is
    // waited for, not read at once.
    eventually(ROUTE_TIMEOUT, || async {
        let flags = backup_flags(&w, &all);
        let want = [("a1", false), ("a2", false), ("b1", true), ("b2", true)]
            .map(|(id, backup)| (id.to_owned(), backup));
        if flags == want {
            Ok(())
        } else {
            Err(format!(
                "backup flags {flags:?}, want {want:?}:\n{}",
                w.haproxy_cfg()
            ))
        }
    })
    .await;

    // One more server in zone-b is added by the runtime API (`add server … backup`), not
    // by a reload, and traffic stays in zone-a.
    // First, synapse settled on the four: no reload pending from the start (a server
    // arriving while one is pending rides on it), its last reload a second old, and the
    // worker that ran before it gone (a runtime command that reaches that worker in its
    // soft stop is refused, "Proxy is disabled.", and settled by another reload).
    let master = w.haproxy.as_ref().expect("haproxy").master();
    eventually(ROUTE_TIMEOUT, || async {
        let status = synapse.counters.services.snapshot();
        let web = &status.services["web"];
        let settled = !status.outputs.reload_pending
            && web.servers.len() == 4
            && web
                .last_change
                .as_ref()
                .is_some_and(|c| c.method != ApplyMethod::ReloadDeferred)
            && status
                .outputs
                .last_reload
                .as_ref()
                .is_some_and(|r| r.seconds_ago >= 1.0);
        let procs = master.show_proc().await.map_err(|e| e.to_string())?;
        if settled && procs.old_workers.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "settled: {settled}, HAProxy's old workers: {:?}",
                procs.old_workers
            ))
        }
    })
    .await;
    let b3 = Backend::start("b3").await;
    let _nerve_b3 = nerve(
        &etcd,
        "host-b3",
        &[&b3],
        serde_json::json!({"zone": "zone-b"}),
    );
    eventually(ROUTE_TIMEOUT, || async {
        let status = synapse.counters.services.snapshot();
        let web = &status.services["web"];
        let method = web.last_change.as_ref().map(|c| c.method);
        let b3_flags = backup_flags(&w, &[&b3]);
        if web.servers.len() == 5
            && method == Some(ApplyMethod::Runtime)
            && b3_flags == [("b3".to_owned(), true)]
        {
            Ok(())
        } else {
            Err(format!(
                "{} servers, last change {method:?}, b3 in the file: {b3_flags:?}",
                web.servers.len()
            ))
        }
    })
    .await;
    w.wait_answering(&["a1", "a2"]).await;
    let reloads = synapse.reloads();

    // a1 fails its check: nerve deregisters it; one server left in zone-a, below
    // min_zone_servers: every zone alike. (Flipping `backup` is a reload: HAProxy has no
    // runtime command for it.)
    a1.set_healthy(false);
    w.wait_answering(&["a2", "b1", "b2", "b3"]).await;
    assert!(synapse.reloads() > reloads);

    // The whole zone dies: zone-b serves.
    a2.set_healthy(false);
    w.wait_answering(&["b1", "b2", "b3"]).await;

    // The zone recovers: traffic goes back to it, zone-b is backup again.
    a1.set_healthy(true);
    a2.set_healthy(true);
    w.wait_answering(&["a1", "a2"]).await;
    eventually(ROUTE_TIMEOUT, || async {
        let backups = backup_flags(&w, &all).iter().filter(|(_, b)| *b).count();
        if backups == 2 {
            Ok(())
        } else {
            Err(format!(
                "{backups} backup servers, want 2:\n{}",
                w.haproxy_cfg()
            ))
        }
    })
    .await;

    synapse.stop().await;
    imds_task.abort();
}
