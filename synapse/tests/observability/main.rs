//! What an operator sees of the real `synapse` binary: `/metrics` scraped from its admin
//! endpoint while real events happen — registrations in a real etcd, applied to a real
//! (managed) HAProxy through the runtime API or a reload, a reload held back by
//! `restart_interval`, a registration rejected, etcd stopped and restarted — the
//! `/status` document, the `synapse status` subcommand, readiness, and the log format.
//! Requests go through HAProxy to real backends, so "applied" is what HAProxy serves.

mod world;

use std::process::Output;
use std::time::Duration;

use integration_tests::{eventually, init_tracing, scrape, Backend, Scrape, Workdir};
use nix::sys::signal::Signal;
use serde_json::Value;

use crate::world::{routes_to, SynapseProcess, World};

const TIMEOUT: Duration = Duration::from_secs(20);

fn of_web(s: &Scrape, name: &str) -> f64 {
    s.value(name, &[("service", "web")])
}

fn reloads(s: &Scrape, result: &str) -> f64 {
    s.value("synapse_haproxy_reloads_total", &[("result", result)])
}

fn runtime_ok(s: &Scrape) -> f64 {
    s.value(
        "synapse_haproxy_runtime_commands_total",
        &[("result", "ok")],
    )
}

fn propagations(s: &Scrape) -> f64 {
    s.value("synapse_propagation_delay_seconds_count", &[])
}

fn source(s: &Scrape, source: &str) -> f64 {
    s.value(
        "synapse_service_source",
        &[("service", "web"), ("source", source)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_registrations_reloads_and_rejections() {
    let w = World::start("obs-metrics").await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let rev_a = w.register("host-a", &a, None).await;
    // restart_interval 2 s: a second reload right after the first must wait.
    let mut synapse =
        SynapseProcess::start(&w.dir, &w.config(2.0), &[("SYNAPSE_LOG_FORMAT", "json")]);

    // The first set: HAProxy started on it (a start, not a reload), from etcd.
    routes_to(w.port, &["a"]).await;
    let s = w
        .scrape_until("the first apply", |s| {
            of_web(s, "synapse_service_backends") == 1.0 && s.value("synapse_ready", &[]) == 1.0
        })
        .await;
    assert_eq!(source(&s, "etcd"), 1.0, "{}", s.text());
    assert_eq!(source(&s, "last_known_good"), 0.0);
    assert_eq!(s.value("synapse_haproxy_starts_total", &[]), 1.0);
    assert_eq!(reloads(&s, "ok"), 0.0);
    assert!(s.value("synapse_config_writes_total", &[]) >= 1.0);
    assert_eq!(of_web(&s, "synapse_etcd_watch_up"), 1.0);
    assert_eq!(of_web(&s, "synapse_etcd_revision"), rev_a as f64);
    assert!(s.value("synapse_etcd_relists_total", &[]) >= 1.0);
    assert_eq!(of_web(&s, "synapse_service_stale_seconds"), 0.0);
    assert!(propagations(&s) >= 1.0);
    assert_eq!(
        s.get(
            "synapse_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    let (code, _) = common::admin::fetch(w.admin, "/readyz").await.unwrap();
    assert_eq!(code, 200);

    // A second server: through the runtime API, no reload.
    let (runtime_before, timed_before) = (runtime_ok(&s), propagations(&s));
    let rev_b = w.register("host-b", &b, None).await;
    routes_to(w.port, &["a", "b"]).await;
    let s = w
        .scrape_until("host-b applied", |s| {
            of_web(s, "synapse_service_backends") == 2.0 && propagations(s) > timed_before
        })
        .await;
    assert!(runtime_ok(&s) > runtime_before, "{}", s.text());
    assert_eq!(reloads(&s, "ok"), 0.0);
    assert_eq!(of_web(&s, "synapse_etcd_revision"), rev_b as f64);
    // "runtime"; or "written" when b reached synapse in the moment between the managed
    // HAProxy's start and synapse seeing it run (about 1 run in 6 here, faster since the
    // leading-edge debounce): b then goes into the file first and into HAProxy by the
    // runtime pass that follows (counted above). Never a reload.
    let status = w.status().await;
    let method = status["services"]["web"]["last_change"]["method"].clone();
    assert!(method == "runtime" || method == "written", "{method}");

    // New server options need a reload: it is done and confirmed.
    w.register("host-b", &b, Some("maxconn 50")).await;
    let s = w
        .scrape_until("a reload", |s| reloads(s, "ok") == 1.0)
        .await;
    assert_eq!(reloads(&s, "failed"), 0.0);
    let status = w
        .status_until("the reload in /status", |s| {
            s["services"]["web"]["last_change"]["method"] == "reload"
        })
        .await;
    assert_eq!(status["outputs"]["last_reload"]["method"], "reload");
    // And another one at once: it waits for restart_interval, then happens.
    w.register("host-b", &b, Some("maxconn 60")).await;
    let s = w
        .scrape_until("the deferred reload", |s| reloads(s, "ok") == 2.0)
        .await;
    assert_eq!(reloads(&s, "rate_limited"), 1.0, "{}", s.text());
    assert_eq!(reloads(&s, "failed"), 0.0);
    assert!(w.dir.read("haproxy.cfg").contains("maxconn 60"));
    routes_to(w.port, &["a", "b"]).await;

    // A hostile value is rejected, counted by reason, and changes nothing.
    let evil = format!(
        r#"{{"host":"127.0.0.1","port":{},"name":"evil","haproxy_server_options":"lua-load /tmp/x.lua"}}"#,
        a.port()
    );
    w.put(&w.key("evil"), &evil).await;
    let s = w
        .scrape_until("the rejection", |s| {
            s.value(
                "synapse_rejected_registrations_total",
                &[("reason", "invalid_option")],
            ) == 1.0
        })
        .await;
    assert_eq!(of_web(&s, "synapse_service_backends"), 2.0);
    routes_to(w.port, &["a", "b"]).await;

    synapse.signal(Signal::SIGTERM);
    assert_eq!(synapse.wait_exit(TIMEOUT).await.code(), Some(0));
    assert_eq!(synapse.haproxy_master(), None, "managed HAProxy still runs");

    // SYNAPSE_LOG_FORMAT=json: one JSON object per line, no colour codes. (The managed
    // HAProxy shares synapse's stderr; its own lines start with `[NOTICE]` and the like.)
    let log = synapse.log();
    assert!(!log.contains('\u{1b}'), "ANSI escape in the log:\n{log}");
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.starts_with('['))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let rejected: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"] == "skipping invalid registration")
        .collect();
    assert_eq!(rejected.len(), 1, "{log}");
    assert_eq!(rejected[0]["reason"], "invalid_option");
    assert!(lines
        .iter()
        .any(|l| l["message"] == "backends changed" && l["service"] == "web"));
}

/// Runs `synapse status` with `args`.
async fn synapse_status(args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_synapse"))
        .arg("status")
        .args(args)
        .env_remove("SYNAPSE_CONFIG")
        .output()
        .await
        .expect("run synapse status")
}

/// `synapse status -o json` output, if it succeeded.
async fn status_json(args: &[&str]) -> Result<Value, String> {
    let out = synapse_status(&[args, &["-o", "json"]].concat()).await;
    if !out.status.success() {
        return Err(format!(
            "exit {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e})"))
}

/// `synapse status` as a table (uncoloured: stdout is not a terminal); panics unless it
/// succeeded.
async fn status_table(args: &[&str]) -> String {
    let out = synapse_status(args).await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && !table.contains('\x1b'),
        "{table}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    table
}

/// The line of `table` that starts with `start`.
fn line<'a>(table: &'a str, start: &str) -> &'a str {
    table
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line {start:?} in:\n{table}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_live_state_through_an_etcd_outage() {
    let mut w = World::start("obs-status").await;
    let a = Backend::start("a").await;
    w.register("host-a", &a, None).await;
    let mut synapse = SynapseProcess::start(&w.dir, &w.config(0.2), &[]);
    let config = w.dir.join("synapse.json");
    let config = config.to_str().expect("utf-8 path");
    let admin = w.admin.to_string();
    let server = format!("host-a_127.0.0.1:{}", a.port());

    // Ready: the subcommand (by config file and by address) shows the applied servers.
    let doc = eventually(TIMEOUT, || async {
        let doc = status_json(&["-c", config]).await?;
        if doc["ready"] == true {
            Ok(doc)
        } else {
            Err(doc.to_string())
        }
    })
    .await;
    let web = &doc["services"]["web"];
    assert_eq!(web["source"], "etcd", "{doc}");
    assert_eq!(web["fresh"], true);
    assert_eq!(web["applied"], true);
    assert_eq!(web["servers"][0]["name"], server.as_str());
    assert_eq!(web["servers"][0]["port"], a.port());
    assert_eq!(web["etcd"]["state"], "watching");
    assert!(web["last_change"]["at_unix"]
        .as_f64()
        .is_some_and(|t| t > 0.0));
    assert!(doc["outputs"]["last_apply"].is_object());
    let by_addr = status_json(&["--admin", &admin])
        .await
        .expect("status --admin");
    assert_eq!(by_addr["services"]["web"]["servers"], web["servers"]);
    routes_to(w.port, &["a"]).await;
    // For people: the service's line, and its server beside HAProxy's view of it.
    let table = status_table(&["-c", config]).await;
    let web_line = line(&table, "web ");
    for want in [" etcd ", " fresh ", " watching @"] {
        assert!(web_line.contains(want), "{want:?} in {table}");
    }
    let detail = status_table(&["web", "-c", config]).await;
    let server_line = line(&detail, &server);
    assert!(
        server_line.contains(" up ") && server_line.contains(" UP "),
        "{detail}"
    );
    assert!(detail.contains("registry and HAProxy agree"), "{detail}");

    // etcd goes away: the last known set stays applied, HAProxy keeps serving, and
    // status and metrics say so.
    w.etcd.stop().await;
    let doc = eventually(TIMEOUT, || async {
        let doc = status_json(&["-c", config]).await?;
        let web = &doc["services"]["web"];
        if web["source"] == "last_known_good"
            && web["etcd"]["state"] == "retrying"
            && web["stale_seconds"].as_f64().is_some_and(|s| s > 0.0)
        {
            Ok(doc)
        } else {
            Err(doc.to_string())
        }
    })
    .await;
    assert_eq!(doc["services"]["web"]["fresh"], false);
    assert_eq!(
        doc["services"]["web"]["servers"][0]["name"],
        server.as_str()
    );
    assert!(doc["services"]["web"]["etcd"]["last_error"].is_string());
    let table = status_table(&["-c", config]).await;
    let web_line = line(&table, "web ");
    for want in [" last-known-good ", " stale ", " retrying @"] {
        assert!(web_line.contains(want), "{want:?} in {table}");
    }
    let s = w
        .scrape_until("the stale state", |s| {
            source(s, "last_known_good") == 1.0 && of_web(s, "synapse_service_stale_seconds") > 0.0
        })
        .await;
    assert_eq!(of_web(&s, "synapse_etcd_watch_up"), 0.0);
    assert_eq!(source(&s, "etcd"), 0.0);
    assert_eq!(of_web(&s, "synapse_service_backends"), 1.0);
    assert!(s.value("synapse_etcd_watch_restarts_total", &[]) >= 1.0);
    routes_to(w.port, &["a"]).await;

    // etcd is back: fresh from etcd again.
    w.etcd.restart().await;
    eventually(TIMEOUT, || async {
        let doc = status_json(&["-c", config]).await?;
        let web = &doc["services"]["web"];
        if web["source"] == "etcd" && web["fresh"] == true && web["etcd"]["state"] == "watching" {
            Ok(())
        } else {
            Err(doc.to_string())
        }
    })
    .await;
    w.scrape_until("the fresh state", |s| {
        source(s, "etcd") == 1.0
            && of_web(s, "synapse_service_stale_seconds") == 0.0
            && of_web(s, "synapse_etcd_watch_up") == 1.0
    })
    .await;

    // Stopped: unreachable, exit 1, nothing on stdout.
    synapse.signal(Signal::SIGTERM);
    assert_eq!(synapse.wait_exit(TIMEOUT).await.code(), Some(0));
    // The outage in the log: a warning when it began, a line when it ended, not one
    // per retry.
    let log = synapse.log();
    let began = log
        .matches("etcd watch interrupted; keeping the last known backends")
        .count();
    assert!(began >= 1, "{log}");
    assert_eq!(log.matches("etcd watch resumed").count(), began, "{log}");
    let out = synapse_status(&["-c", config]).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unreachable"), "{stderr}");
    assert!(out.stdout.is_empty());
}

/// With no `admin_listen`, synapse serves its admin endpoint on the default
/// 127.0.0.1:9102 and `synapse status` (no flags, no config) finds it; a second synapse
/// whose default port is taken says so once and runs on without it (it still writes its
/// output).
///
/// The default port is fixed: this is the only test in this binary that leaves it to
/// synapse (the others set a free port). Something else on the machine may hold it; the
/// first synapse's log says which, and then only the check that it serves the port is
/// skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_admin_endpoint_and_a_taken_port() {
    const DEADLINE: Duration = Duration::from_secs(30);
    init_tracing();
    let config = |dir: &Workdir, service: &str| {
        format!(
            r#"{{"services": {{"{service}": {{"discovery": {{"method": "base"}},
                  "default_servers": [{{"name": "s1", "host": "127.0.0.1", "port": 8001}}]}}}},
                "file_output": {{"output_directory": "{}"}}}}"#,
            dir.path().display()
        )
    };
    let admin_line = |synapse: &SynapseProcess| {
        let log = synapse.log();
        match (
            log.contains("admin endpoint listening"),
            log.contains("admin endpoint off: cannot listen on"),
        ) {
            (true, false) => Ok(true),
            (false, true) => Ok(false),
            _ => Err(format!("no single admin endpoint line yet:\n{log}")),
        }
    };
    let (dir1, dir2) = (Workdir::new(), Workdir::new());
    let mut first = SynapseProcess::start(&dir1, &config(&dir1, "dflt-first"), &[]);
    let served = eventually(DEADLINE, || async { admin_line(&first) }).await;
    if served {
        eventually(DEADLINE, || async {
            let out = synapse_status(&[]).await;
            let table = String::from_utf8_lossy(&out.stdout).into_owned();
            // Applied: the service routes to its default server.
            if out.status.success()
                && table.starts_with("synapse  ready")
                && table
                    .lines()
                    .any(|l| l.starts_with("dflt-first ") && l.contains(" static "))
            {
                Ok(())
            } else {
                Err(format!("{table}{}", String::from_utf8_lossy(&out.stderr)))
            }
        })
        .await;
        let metrics = scrape(common::admin::SYNAPSE_DEFAULT_LISTEN)
            .await
            .expect("/metrics on the default port");
        assert_eq!(
            metrics.value("synapse_service_backends", &[("service", "dflt-first")]),
            1.0
        );
    } else {
        eprintln!(
            "{} is taken by another process: not checking that synapse serves it",
            common::admin::SYNAPSE_DEFAULT_LISTEN
        );
    }

    let mut second = SynapseProcess::start(&dir2, &config(&dir2, "dflt-second"), &[]);
    assert!(!eventually(DEADLINE, || async { admin_line(&second) }).await);
    let output = dir2.join("dflt-second.json");
    eventually(DEADLINE, || async {
        std::fs::read_to_string(&output).map_err(|e| e.to_string())
    })
    .await;
    let log = second.log();
    assert_eq!(log.matches("admin endpoint off").count(), 1, "{log}");
    second.signal(Signal::SIGTERM);
    assert_eq!(second.wait_exit(DEADLINE).await.code(), Some(0), "{log}");
    first.signal(Signal::SIGTERM);
    assert_eq!(first.wait_exit(DEADLINE).await.code(), Some(0));
}
