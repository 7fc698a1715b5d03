//! What an operator sees of the real `nerve` binary: `/metrics` scraped from its admin
//! endpoint while real events happen (a registration, a health flip, a drain, a lease
//! lost while nerve was frozen), the `nerve status` subcommand, and the log format.

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use integration_tests::{
    eventually, free_port, init_tracing, loopback, scrape, Backend, Etcd, Scrape, Workdir,
};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

use crate::support::{config, http_service, wait_keys, NerveProcess, TTL};

const SLACK: Duration = Duration::from_secs(5);

/// Scrapes until `ok` holds; returns that scrape. On timeout, shows the last one.
async fn scrape_until(addr: SocketAddr, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
    eventually(SLACK, || async {
        let s = scrape(addr).await?;
        if ok(&s) {
            Ok(s)
        } else {
            Err(format!("waiting for {what}; scraped:\n{}", s.text()))
        }
    })
    .await
}

fn web(s: &Scrape, name: &str) -> f64 {
    s.value(name, &[("service", "web")])
}

fn puts(s: &Scrape) -> f64 {
    s.value(
        "nerve_registration_writes_total",
        &[("service", "web"), ("op", "put")],
    )
}

fn deletes(s: &Scrape) -> f64 {
    s.value(
        "nerve_registration_writes_total",
        &[("service", "web"), ("op", "delete")],
    )
}

#[tokio::test]
async fn metrics_follow_registration_health_drain_and_lease_loss() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let backend = Backend::start("web").await;
    let admin = loopback(free_port());
    let drain = dir.join("web.down");
    let mut service = http_service(backend.port(), "/svc/web", 1, 1);
    service["maintenance_file"] = json!(drain);
    let mut cfg = config(&etcd.endpoints(), "host-1", json!({ "web": service }));
    cfg["admin_listen"] = json!(admin.to_string());
    let mut nerve =
        NerveProcess::start_with_env(&dir, "nerve", &cfg, &[("NERVE_LOG_FORMAT", "json")]);

    // Registered: one put, healthy, one lease, connected.
    wait_keys(&client, "/svc/web/", 1, SLACK).await;
    let s = scrape_until(admin, "the registration", |s| {
        puts(s) == 1.0 && s.value("nerve_registrations", &[]) == 1.0
    })
    .await;
    assert_eq!(web(&s, "nerve_service_healthy"), 1.0);
    assert_eq!(web(&s, "nerve_service_reported"), 1.0);
    assert_eq!(web(&s, "nerve_service_drained"), 0.0);
    assert_eq!(s.value("nerve_lease_grants_total", &[]), 1.0);
    assert_eq!(s.value("nerve_lease_losses_total", &[]), 0.0);
    assert_eq!(s.value("nerve_etcd_connected", &[]), 1.0);
    assert_eq!(deletes(&s), 0.0);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        s.get("nerve_build_info", &[("version", version)]),
        Some(1.0)
    );
    let probes = s.value(
        "nerve_check_duration_seconds_count",
        &[("service", "web"), ("check", "0")],
    );
    assert!(probes >= 1.0, "{}", s.text());
    assert_eq!(
        probes,
        s.value(
            "nerve_check_runs_total",
            &[("service", "web"), ("result", "ok")]
        ) + s.value(
            "nerve_check_runs_total",
            &[("service", "web"), ("result", "failed")]
        ),
        "one duration per probe"
    );

    // Health flip: unhealthy → deregistered, a failed probe and a transition counted.
    let transitions = web(&s, "nerve_health_transitions_total");
    backend.set_healthy(false);
    wait_keys(&client, "/svc/web/", 0, SLACK).await;
    let s = scrape_until(admin, "the deregistration", |s| deletes(s) == 1.0).await;
    assert_eq!(web(&s, "nerve_service_healthy"), 0.0);
    assert_eq!(web(&s, "nerve_service_reported"), 0.0);
    assert_eq!(s.value("nerve_registrations", &[]), 0.0);
    assert_eq!(web(&s, "nerve_health_transitions_total"), transitions + 1.0);
    assert!(
        s.value(
            "nerve_check_runs_total",
            &[("service", "web"), ("result", "failed")]
        ) >= 1.0
    );
    backend.set_healthy(true);
    wait_keys(&client, "/svc/web/", 1, SLACK).await;
    scrape_until(admin, "the second put", |s| {
        puts(s) == 2.0 && web(s, "nerve_service_healthy") == 1.0
    })
    .await;

    // Drain with the maintenance file, and back.
    std::fs::write(&drain, "").expect("touch the maintenance file");
    wait_keys(&client, "/svc/web/", 0, SLACK).await;
    // The delete counter moves once etcd has answered, a moment after the gauge: wait
    // for both.
    let s = scrape_until(admin, "the drain", |s| {
        web(s, "nerve_service_drained") == 1.0 && deletes(s) >= 2.0
    })
    .await;
    assert_eq!(
        web(&s, "nerve_service_healthy"),
        1.0,
        "drained, not unhealthy"
    );
    assert_eq!(deletes(&s), 2.0);
    std::fs::remove_file(&drain).expect("remove the maintenance file");
    wait_keys(&client, "/svc/web/", 1, SLACK).await;
    scrape_until(admin, "the return", |s| {
        web(s, "nerve_service_drained") == 0.0 && puts(s) == 3.0
    })
    .await;

    // Frozen past the TTL: the lease expires; on SIGCONT nerve re-grants and re-puts.
    nerve.signal(Signal::SIGSTOP);
    wait_keys(&client, "/svc/web/", 0, Duration::from_secs(TTL) + SLACK).await;
    nerve.signal(Signal::SIGCONT);
    wait_keys(&client, "/svc/web/", 1, SLACK).await;
    let s = scrape_until(admin, "the re-grant", |s| {
        s.value("nerve_lease_grants_total", &[]) == 2.0 && puts(s) == 4.0
    })
    .await;
    assert_eq!(s.value("nerve_lease_losses_total", &[]), 1.0);
    assert_eq!(s.value("nerve_etcd_connected", &[]), 1.0);

    nerve.signal(Signal::SIGTERM);
    assert_eq!(nerve.wait_exit(SLACK).await.code(), Some(0));

    // NERVE_LOG_FORMAT=json: every line is a JSON object; state changes are single
    // lines with their fields; no terminal colour codes in a file.
    let log = nerve.log();
    assert!(!log.contains('\u{1b}'), "ANSI escape in the log:\n{log}");
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let said = |message: &str| {
        lines
            .iter()
            .filter(|l| l["message"] == message && l["service"] == "web")
            .count()
    };
    assert_eq!(said("service is unhealthy"), 1, "{log}");
    assert_eq!(said("maintenance file present: reporting down"), 1, "{log}");
}

/// Runs `nerve status` with `args` (and no NERVE_* variables unless given).
async fn nerve_status(args: &[&str], env: &[(&str, &str)]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_nerve"))
        .arg("status")
        .args(args)
        .env_remove("NERVE_CONFIG")
        .env_remove("NERVE_INSTANCE_ID")
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run nerve status")
}

/// The line of `nerve status` (a table) that starts with `start`; panics with the whole
/// output if there is none, or if it is coloured.
async fn table_line(args: &[&str], start: &str) -> String {
    let out = nerve_status(args, &[]).await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && !table.contains('\x1b'), "{table}");
    assert!(table.contains("etcd connected"), "{table}");
    table
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line {start:?} in:\n{table}"))
        .to_owned()
}

fn stdout_json(out: &Output) -> Result<Value, String> {
    if !out.status.success() {
        return Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e})"))
}

#[tokio::test]
async fn status_subcommand_prints_the_live_state() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let backend = Backend::start("web").await;
    // A wildcard listen address: `status -c` asks it on loopback.
    let port = free_port();
    let mut cfg = config(
        &etcd.endpoints(),
        "host-1",
        json!({"web": http_service(backend.port(), "/svc/web", 1, 1)}),
    );
    cfg["admin_listen"] = json!(format!("0.0.0.0:{port}"));
    let mut nerve = NerveProcess::start(&dir, "nerve", &cfg);
    let config_path = dir.join("nerve.json");
    let config_arg = config_path.to_str().expect("utf-8 path");
    let admin = loopback(port).to_string();
    let kvs = wait_keys(&client, "/svc/web/", 1, SLACK).await;

    // By address, by config file, by NERVE_CONFIG: the same live state.
    let by_addr = eventually(SLACK, || async {
        let doc = stdout_json(&nerve_status(&["--admin", &admin, "-o", "json"], &[]).await)?;
        if doc["registry"]["keys"].as_object().map(|k| k.len()) == Some(1) {
            Ok(doc)
        } else {
            Err(doc.to_string())
        }
    })
    .await;
    assert_eq!(by_addr["instance_id"], "host-1");
    assert_eq!(by_addr["services"]["web"]["healthy"], true);
    assert_eq!(by_addr["services"]["web"]["reported"], true);
    assert_eq!(by_addr["registry"]["connected"], true);
    assert_eq!(by_addr["registry"]["keys"][&kvs[0].key], "web");
    let by_file = stdout_json(&nerve_status(&["-c", config_arg, "-o", "json"], &[]).await)
        .expect("status -c");
    assert_eq!(by_file["registry"]["keys"], by_addr["registry"]["keys"]);
    let by_env = stdout_json(&nerve_status(&["-o", "json"], &[("NERVE_CONFIG", config_arg)]).await)
        .expect("status with NERVE_CONFIG");
    assert_eq!(by_env["instance_id"], "host-1");
    let ttl = by_addr["registry"]["lease_ttl_secs"]
        .as_u64()
        .expect("lease TTL");
    let left = by_addr["registry"]["lease_ttl_left_secs"]
        .as_u64()
        .expect("lease TTL left");
    assert!(left <= ttl, "{by_addr}");
    assert_eq!(by_addr["services"]["web"]["last_check"], "ok");
    // The table, for people (no colour: stdout is not a terminal).
    let line = table_line(&["-c", config_arg], "web ").await;
    assert!(
        line.contains(" healthy ") && line.contains(" yes "),
        "{line}"
    );

    // It follows a health flip.
    backend.set_healthy(false);
    eventually(SLACK, || async {
        let doc = stdout_json(&nerve_status(&["-c", config_arg, "-o", "json"], &[]).await)?;
        let web = &doc["services"]["web"];
        if web["healthy"] == false
            && web["reported"] == false
            && doc["registry"]["keys"] == json!({})
        {
            Ok(())
        } else {
            Err(doc.to_string())
        }
    })
    .await;
    let line = table_line(&["-c", config_arg], "web ").await;
    assert!(
        line.contains("unhealthy") && line.contains(" no ") && line.contains("answered HTTP 5"),
        "{line}"
    );

    // The endpoint turned off in the config: usage error. Stopped nerve: unreachable, exit 1.
    let off = dir.write("off.json", r#"{"admin_listen": null}"#);
    let out = nerve_status(&["-c", off.to_str().expect("utf-8 path")], &[]).await;
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("admin_listen") && stderr.contains("off"),
        "{stderr}"
    );
    nerve.signal(Signal::SIGTERM);
    assert_eq!(nerve.wait_exit(SLACK).await.code(), Some(0));
    let out = nerve_status(&["-c", config_arg], &[]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// Which of the two lines about the admin endpoint `log` has, once it has one: `true`
/// listening, `false` off (the address was taken).
fn admin_line(log: &str) -> Result<bool, String> {
    let listening = log.contains("admin endpoint listening");
    let off = log.contains("admin endpoint off: cannot listen on");
    match (listening, off) {
        (true, false) => Ok(true),
        (false, true) => Ok(false),
        _ => Err(format!("no single admin endpoint line yet:\n{log}")),
    }
}

/// With no `admin_listen`, nerve serves its admin endpoint on the default
/// 127.0.0.1:9101 and `nerve status` (no flags, no config) finds it; a second nerve
/// whose default port is taken says so once and runs on without the endpoint.
///
/// The default port is fixed: this is the only test in this binary that leaves it to
/// nerve (the others set a free port), so nothing here competes for it. Something else
/// on the machine may hold it; then the first nerve cannot have it either, which this
/// test reads from its log: it skips only the check that the first nerve serves the
/// port, and still checks that both nerves run and register despite the conflict.
#[tokio::test]
async fn default_admin_endpoint_and_a_taken_port() {
    const DEADLINE: Duration = Duration::from_secs(30);
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let dir = Workdir::new();
    let backend = Backend::start("web").await;
    let nerve_on = |instance: &str, path: &str| {
        let mut cfg = config(
            &etcd.endpoints(),
            instance,
            json!({"web": http_service(backend.port(), path, 1, 1)}),
        );
        cfg.as_object_mut().expect("object").remove("admin_listen");
        cfg
    };
    let mut first = NerveProcess::start(&dir, "first", &nerve_on("host-default", "/svc/first"));
    wait_keys(&client, "/svc/first/", 1, DEADLINE).await;
    let served = eventually(DEADLINE, || async { admin_line(&first.log()) }).await;
    if served {
        let doc = eventually(DEADLINE, || async {
            let doc = stdout_json(&nerve_status(&["-o", "json"], &[]).await)?;
            if doc["registry"]["keys"].as_object().map(|k| k.len()) == Some(1) {
                Ok(doc)
            } else {
                Err(doc.to_string())
            }
        })
        .await;
        assert_eq!(
            doc["instance_id"], "host-default",
            "another nerve on the port"
        );
        let line = table_line(&[], "web ").await;
        assert!(line.contains(" yes "), "{line}");
        let metrics = scrape(common::admin::NERVE_DEFAULT_LISTEN)
            .await
            .expect("/metrics on the default port");
        assert_eq!(metrics.value("nerve_registrations", &[]), 1.0);
    } else {
        eprintln!(
            "{} is taken by another process: not checking that nerve serves it",
            common::admin::NERVE_DEFAULT_LISTEN
        );
    }

    // The port is taken now (by the first nerve, or by whatever held it).
    let mut second = NerveProcess::start(&dir, "second", &nerve_on("host-second", "/svc/second"));
    wait_keys(&client, "/svc/second/", 1, DEADLINE).await;
    assert!(!eventually(DEADLINE, || async { admin_line(&second.log()) }).await);
    let log = second.log();
    assert_eq!(log.matches("admin endpoint off").count(), 1, "{log}");
    assert!(second.is_running(), "{log}");
    assert!(first.is_running());
    second.signal(Signal::SIGTERM);
    assert_eq!(second.wait_exit(DEADLINE).await.code(), Some(0));
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(DEADLINE).await.code(), Some(0));
}
