//! What an operator sees of the real `synapse` binary: `/metrics` scraped from its admin
//! endpoint while real events happen — registrations in a real etcd, applied to a real
//! (managed) HAProxy through the runtime API or a reload, a reload held back by
//! `restart_interval`, a registration rejected, etcd stopped and restarted — the
//! `/status` document, the `synapse status` subcommand, readiness, and the log format.
//! Requests go through HAProxy to real backends, so "applied" is what HAProxy serves.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use common::{Host, InstanceId, Port, Registration, ServerOptions, ServiceName, ServicePath};
use etcd_client::Client;
use integration_tests::{
    eventually, free_port, http_get, init_tracing, loopback, scrape, Backend, Etcd, Scrape, Workdir,
};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(20);

/// The synapse binary on a config file in a workdir; stderr to `synapse.log` (printed
/// if the test fails). On drop: SIGTERM (synapse stops its managed HAProxy), SIGKILL
/// after a grace period, then the managed HAProxy's process group by the PID in its pid
/// file, if it is still that HAProxy.
struct SynapseProcess {
    child: Option<Child>,
    log: PathBuf,
    config: PathBuf,
    pid_file: PathBuf,
}

impl SynapseProcess {
    fn start(dir: &Workdir, config: &str, env: &[(&str, &str)]) -> Self {
        let config_path = dir.write("synapse.json", config);
        let log = dir.join("synapse.log");
        let file = std::fs::File::create(&log).expect("create synapse log");
        let child = Command::new(env!("CARGO_BIN_EXE_synapse"))
            .arg("-c")
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("SYNAPSE_CONFIG")
            .env_remove("SYNAPSE_LOG_FORMAT")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("start the synapse binary");
        Self {
            child: Some(child),
            log,
            config: config_path,
            pid_file: dir.join("haproxy.pid"),
        }
    }

    fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("synapse already reaped");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        kill(pid, signal).expect("signal synapse");
    }

    async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("synapse already reaped");
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("wait for synapse") {
                self.child = None;
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "synapse did not exit within {within:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The managed HAProxy master's PID, while it runs this test's config.
    fn haproxy_master(&self) -> Option<u32> {
        let pid: u32 = std::fs::read_to_string(&self.pid_file)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = self.config.with_file_name("haproxy.cfg");
        let ours = String::from_utf8_lossy(&cmdline).contains(config.to_str()?);
        ours.then_some(pid)
    }
}

impl Drop for SynapseProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(master) = self.haproxy_master() {
            // HAProxy runs in its own process group (synapse starts it so).
            let _ = killpg(Pid::from_raw(master as i32), Signal::SIGKILL);
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of {} ---", self.log.display());
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// One test's etcd, workdir, service path, and ports.
struct World {
    dir: Workdir,
    etcd: Etcd,
    client: Client,
    prefix: String,
    port: u16,
    admin: SocketAddr,
}

impl World {
    async fn start(test: &str) -> Self {
        init_tracing();
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        Self {
            dir: Workdir::new(),
            etcd,
            client,
            prefix: format!("/it/{test}"),
            port: free_port(),
            admin: loopback(free_port()),
        }
    }

    fn path(&self) -> ServicePath {
        ServicePath::new(&format!("{}/web", self.prefix)).expect("service path")
    }

    /// One etcd service `web` on `port`, a managed HAProxy with the runtime API, and
    /// the admin endpoint.
    fn config(&self, restart_interval: f64) -> String {
        let p = |f: &str| self.dir.join(f).display().to_string();
        format!(
            r#"{{
              "services": {{"web": {{
                "discovery": {{"method": "etcd", "hosts": ["{etcd}"], "path": "{path}",
                               "progress_interval": 0.5,
                               "etcd": {{"dial_timeout": 1, "request_timeout": 2,
                                         "keepalive_interval": 1, "keepalive_timeout": 1}}}},
                "haproxy": {{"port": {port},
                             "server_options": "check inter 300ms rise 1 fall 1",
                             "listen": ["balance roundrobin", "option httpchk GET /health"]}}
              }}}},
              "debounce": 0.02,
              "debounce_max_wait": 0.2,
              "admin_listen": "{admin}",
              "haproxy": {{
                "config_file_path": "{cfg}",
                "socket_file_path": "{stats}",
                "pid_file_path": "{pid}",
                "managed": true,
                "stop_timeout": 2,
                "do_checks": true,
                "restart_interval": {restart_interval},
                "bind_address": "127.0.0.1",
                "global": ["stats socket {stats} mode 600 level admin expose-fd listeners",
                           "hard-stop-after 5s"],
                "defaults": ["mode http", "timeout connect 1s", "timeout client 5s",
                             "timeout server 5s", "retries 2", "option redispatch 1"]
              }}
            }}"#,
            etcd = self.etcd.client_addr(),
            path = self.path(),
            port = self.port,
            admin = self.admin,
            cfg = p("haproxy.cfg"),
            stats = p("stats.sock"),
            pid = p("haproxy.pid"),
        )
    }

    fn key(&self, instance: &str) -> String {
        self.path().nerve_key(
            &InstanceId::new(instance).expect("instance id"),
            &ServiceName::new("web").expect("service name"),
            1,
        )
    }

    /// Registers `backend` as `instance`; returns the put's revision.
    async fn register(&self, instance: &str, backend: &Backend, options: Option<&str>) -> i64 {
        let reg = Registration {
            host: Host::Ip(backend.addr().ip()),
            port: Port::new(backend.port()).expect("port"),
            name: InstanceId::new(instance).expect("instance id"),
            weight: None,
            haproxy_server_options: options.map(|o| ServerOptions::parse(o).expect("options")),
            labels: Default::default(),
        };
        self.put(&self.key(instance), &reg.encode()).await
    }

    async fn put(&self, key: &str, value: &str) -> i64 {
        let resp = self
            .client
            .kv_client()
            .put(key, value, None)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        resp.header().expect("put header").revision()
    }

    async fn scrape_until(&self, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
        eventually(TIMEOUT, || async {
            let s = scrape(self.admin).await?;
            if ok(&s) {
                Ok(s)
            } else {
                Err(format!("waiting for {what}; scraped:\n{}", s.text()))
            }
        })
        .await
    }

    async fn status(&self) -> Value {
        let (code, body) = common::admin::fetch(self.admin, "/status")
            .await
            .expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }
}

/// Waits until requests through HAProxy reach exactly the backends `want`.
async fn routes_to(port: u16, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(TIMEOUT, || {
        let want = want.clone();
        async move {
            let mut seen = BTreeSet::new();
            for _ in 0..3 * want.len() + 3 {
                let r = http_get(loopback(port), "/")
                    .await
                    .map_err(|e| format!("request failed: {e}"))?;
                if r.status != 200 {
                    return Err(format!("status {}", r.status));
                }
                seen.insert(r.body.trim().to_owned());
            }
            if seen == want {
                Ok(())
            } else {
                Err(format!("routed to {seen:?}, want {want:?}"))
            }
        }
    })
    .await;
}

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
    let status = w.status().await;
    assert_eq!(status["services"]["web"]["last_change"]["method"], "reload");
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
