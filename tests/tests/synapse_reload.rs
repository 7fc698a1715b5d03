//! synapse re-reading its config file on SIGHUP, keeping servers' state across reloads,
//! and starting cold from its state file, against real etcd, real HAProxy (master-worker,
//! reloaded through the master CLI) and real requests: services added, changed and
//! removed; an unchanged file touches nothing (no reload, no re-list); a bad file is
//! refused with the running config kept and the refusal visible in `/status`; with etcd
//! down and no haproxy.cfg, HAProxy starts from the state file; `synapse diff` shows
//! (golden files) exactly what the next run then does, and changes nothing.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use common::{Host, InstanceId, Port, Registration, ServiceName, ServicePath};
use etcd_client::Client;
use integration_tests::{
    eventually, free_port, http_get, init_tracing, loopback, Backend, Etcd, Haproxy,
    InProcessSynapse as Synapse, Workdir,
};

const TIMEOUT: Duration = Duration::from_secs(20);

struct World {
    dir: Workdir,
    etcd_server: Etcd,
    etcd: String,
    client: Client,
}

impl World {
    async fn start() -> Self {
        init_tracing();
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        Self {
            dir: Workdir::new(),
            etcd: etcd.client_addr().to_string(),
            etcd_server: etcd,
            client,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn service_path(service: &str) -> ServicePath {
        ServicePath::new(&format!("/it/reload/{service}")).expect("service path")
    }

    /// One service entry: etcd discovery under `/it/reload/<service>`, a frontend on
    /// `port`, and `backend` lines.
    fn service(&self, service: &str, port: u16, backend: &str) -> String {
        self.service_with(service, port, backend, "")
    }

    /// [`Self::service`] with more keys in its `haproxy` section (`, "key": ...`).
    fn service_with(&self, service: &str, port: u16, backend: &str, keys: &str) -> String {
        format!(
            r#""{service}": {{
                "discovery": {{"method": "etcd", "hosts": ["{etcd}"], "path": "{path}"}},
                "haproxy": {{"port": {port}, "listen": ["balance roundrobin"], "backend": [{backend}]{keys}}}
              }}"#,
            etcd = self.etcd,
            path = Self::service_path(service),
        )
    }

    /// Writes synapse's config file with these service entries and top-level extra keys.
    fn write_config(&self, services: &[String], extra: &str) -> PathBuf {
        self.write_config_with(services, "", "", extra)
    }

    /// [`Self::write_config`] with more `global` lines (`, "line"...`) and more keys
    /// of the `haproxy` section (`, "key": ...`).
    fn write_config_with(
        &self,
        services: &[String],
        global: &str,
        haproxy: &str,
        extra: &str,
    ) -> PathBuf {
        let text = format!(
            r#"{{
              "services": {{{services}}},
              "debounce": 0.02,
              "debounce_max_wait": 0.2,
              "haproxy": {{
                "config_file_path": "{cfg}",
                "socket_file_path": "{stats}",
                "reload_method": "master_socket",
                "master_socket_path": "{master}",
                "restart_interval": 0.2,
                "bind_address": "127.0.0.1",
                "global": ["stats socket {stats} mode 600 level admin expose-fd listeners",
                           "hard-stop-after 10s"{global}],
                "defaults": ["mode http", "timeout connect 1s", "timeout client 10s",
                             "timeout server 10s", "retries 2", "option redispatch 1"]
                {haproxy}
              }}
              {extra}
            }}"#,
            services = services.join(","),
            cfg = self.path("haproxy.cfg").display(),
            stats = self.path("stats.sock").display(),
            master = self.path("master.sock").display(),
        );
        self.dir.write("synapse.json", text)
    }

    async fn register(&self, service: &str, instance: &str, backend: &Backend) {
        let reg = Registration {
            host: Host::Ip(backend.addr().ip()),
            port: Port::new(backend.port()).expect("port"),
            name: InstanceId::new(instance).expect("instance id"),
            weight: None,
            haproxy_server_options: None,
            labels: Default::default(),
        };
        let key = Self::service_path(service).nerve_key(
            &InstanceId::new(instance).expect("instance id"),
            &ServiceName::new(service).expect("service name"),
            1,
        );
        self.client
            .kv_client()
            .put(key, reg.encode(), None)
            .await
            .expect("put");
    }
}

/// Waits until requests to `port` are answered by exactly `want`.
async fn wait_answering(port: u16, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
    eventually(TIMEOUT, || async {
        let mut got = BTreeSet::new();
        for _ in 0..want.len() * 4 {
            let r = http_get(loopback(port), "/")
                .await
                .map_err(|e| format!("request failed: {e}"))?;
            if r.status != 200 {
                return Err(format!("status {}", r.status));
            }
            got.insert(r.body.trim().to_owned());
        }
        if got == want {
            Ok(())
        } else {
            Err(format!("answering {got:?}, want {want:?}"))
        }
    })
    .await;
}

/// Waits until nothing listens on `port` any more.
async fn wait_closed(port: u16) {
    eventually(TIMEOUT, || async {
        match http_get(loopback(port), "/").await {
            Err(_) => Ok(()),
            Ok(r) => Err(format!("still answered: {} {}", r.status, r.body.trim())),
        }
    })
    .await;
}

/// Sends SIGHUP and waits until synapse has dealt with it: `applied` more reloads
/// applied, `refused` more refused.
async fn sighup(synapse: &Synapse, applied: u64, refused: u64) {
    let (ok0, bad0) = (
        synapse.get(|c| &c.config_reloads),
        synapse.get(|c| &c.config_reload_failures),
    );
    synapse.sighup();
    eventually(TIMEOUT, || async {
        let (ok, bad) = (
            synapse.get(|c| &c.config_reloads),
            synapse.get(|c| &c.config_reload_failures),
        );
        if ok == ok0 + applied && bad == bad0 + refused {
            Ok(())
        } else {
            Err(format!("config reloads ok {ok}, refused {bad}"))
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_changes_and_removes_services_and_refuses_a_bad_config() {
    let world = World::start().await;
    let (web_port, api_port, web_port2) = (free_port(), free_port(), free_port());
    let web = world.service("web", web_port, "");
    let path = world.write_config(std::slice::from_ref(&web), "");
    let synapse = Synapse::start_reloading(&path).await;
    let (a, b, c) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    );
    world.register("web", "a", &a).await;
    let _haproxy = Haproxy::start_for_synapse(world.dir.path()).await;
    eventually(TIMEOUT, || async { synapse.reloads() >= 1 }).await;
    wait_answering(web_port, &["a"]).await;

    // The same file again: nothing is touched. A registration after the SIGHUP goes
    // through the runtime API as before: no reload, and web's watcher was not
    // restarted (no re-list).
    let (reloads, relists) = (synapse.reloads(), synapse.get(|c| &c.relists));
    sighup(&synapse, 1, 0).await;
    world.register("web", "b", &b).await;
    wait_answering(web_port, &["a", "b"]).await;
    assert_eq!(
        synapse.reloads(),
        reloads,
        "an unchanged config reloaded HAProxy"
    );
    assert_eq!(
        synapse.get(|c| &c.relists),
        relists,
        "an unchanged service was re-listed"
    );

    // A service added: its own watcher (one list), its frontend after one reload;
    // web keeps routing meanwhile.
    world.register("api", "c", &c).await;
    let api = world.service("api", api_port, "");
    world.write_config(&[web.clone(), api.clone()], "");
    sighup(&synapse, 1, 0).await;
    wait_answering(api_port, &["c"]).await;
    wait_answering(web_port, &["a", "b"]).await;
    assert_eq!(synapse.get(|c| &c.relists), relists + 1);
    // (Counted once the reload is confirmed, which may be after the new worker answers.)
    eventually(TIMEOUT, || async { synapse.reloads() > reloads }).await;

    // A service added whose registry does not answer (nothing listens where its etcd
    // should be): the others are still applied meanwhile.
    let dead = format!(
        r#""dead": {{"discovery": {{"method": "etcd", "hosts": ["127.0.0.1:{}"],
                                   "path": "/it/reload/dead"}},
                     "haproxy": {{"port": {}}}}}"#,
        free_port(),
        free_port()
    );
    let reloads = synapse.reloads();
    world.write_config(&[web.clone(), api.clone(), dead], "");
    sighup(&synapse, 1, 0).await;
    let d = Backend::start("d").await;
    world.register("web", "d", &d).await;
    wait_answering(web_port, &["a", "b", "d"]).await;
    // Its frontend (no servers yet) took one reload.
    eventually(TIMEOUT, || async { synapse.reloads() > reloads }).await;

    // A bad file (an invalid port, a key that needs a restart): refused, the running
    // config stays and keeps routing, /status says why.
    let reloads = synapse.reloads();
    std::fs::write(
        &path,
        "{\"services\": {\"web\": {\"haproxy\": {\"port\": \"x\"}}}}",
    )
    .expect("write bad config");
    sighup(&synapse, 0, 1).await;
    let status = synapse.counters.services.snapshot();
    let error = status.config.last_error.clone().unwrap_or_default();
    assert!(
        error.contains("services.web"),
        "the refusal names the key: {error:?}"
    );
    world.write_config(
        &[web.clone(), api.clone()],
        r#", "admin_listen": "127.0.0.1:1""#,
    );
    sighup(&synapse, 0, 1).await;
    let error = synapse
        .counters
        .services
        .snapshot()
        .config
        .last_error
        .unwrap_or_default();
    assert!(error.contains("admin_listen"), "{error:?}");
    wait_answering(web_port, &["a", "b", "d"]).await;
    wait_answering(api_port, &["c"]).await;
    assert_eq!(
        synapse.reloads(),
        reloads,
        "a refused config reloaded HAProxy"
    );

    // web changed (moved to another port), api removed: web answers on its new port,
    // nothing listens on the old ones, api is gone from /status.
    let moved = world.service(
        "web",
        web_port2,
        r#""http-response set-header X-Moved yes""#,
    );
    world.write_config(&[moved], "");
    sighup(&synapse, 1, 0).await;
    wait_answering(web_port2, &["a", "b", "d"]).await;
    wait_closed(web_port).await;
    wait_closed(api_port).await;
    let r = http_get(loopback(web_port2), "/").await.expect("request");
    assert_eq!(r.header("x-moved"), Some("yes"));
    let status = synapse.counters.services.snapshot();
    assert!(
        !status.services.contains_key("api"),
        "{:?}",
        status.services.keys()
    );
    assert_eq!(status.config.last_error, None);
    synapse.stop().await;
}

/// The default config (no server-state lines written by the operator) keeps servers'
/// runtime state across a reload: a server the old worker holds DOWN is DOWN in the new
/// worker from its start. Without the state file the new worker would run it as UP
/// until its first check: with two checked servers 60 s apart, HAProxy checks the
/// second one (b, ordered by `backend_order: asc`) 30 s after start, far beyond this
/// test's look.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_state_survives_a_reload_by_default() {
    let world = World::start().await;
    let port = free_port();
    let web = world.service_with(
        "web",
        port,
        r#""option httpchk GET /health""#,
        r#", "server_options": "check inter 60s fall 1 rise 1", "backend_order": "asc""#,
    );
    let path = world.write_config(std::slice::from_ref(&web), "");
    let synapse = Synapse::start_reloading(&path).await;
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    world.register("web", "a", &a).await;
    world.register("web", "b", &b).await;
    let haproxy = Haproxy::start_for_synapse(world.dir.path()).await;
    eventually(TIMEOUT, || async { synapse.reloads() >= 1 }).await;
    wait_answering(port, &["a", "b"]).await;
    let cfg = std::fs::read_to_string(world.path("haproxy.cfg")).expect("haproxy.cfg");
    assert!(
        cfg.contains("load-server-state-from-file global"),
        "synapse adds the server-state lines by default:\n{cfg}"
    );

    // b fails its checks from now on; the running worker learns it at once (an
    // operator's `set server health`), far ahead of its next check.
    b.set_healthy(false);
    let b_name = format!("b_{}", b.addr());
    let answer = haproxy
        .runtime()
        .command(&format!("set server web/{b_name} health down"))
        .await
        .expect("set health");
    assert!(answer.trim().is_empty(), "set server health: {answer}");
    wait_answering(port, &["a"]).await;

    // A change that needs a reload (a new global line), through SIGHUP.
    let workers = haproxy.master().worker_pids().await.expect("workers");
    let reloads = synapse.reloads();
    world.write_config_with(&[web], r#", "maxconn 4000""#, "", "");
    sighup(&synapse, 1, 0).await;
    eventually(TIMEOUT, || async { synapse.reloads() > reloads }).await;
    let new_workers = haproxy.master().worker_pids().await.expect("workers");
    assert_ne!(new_workers, workers, "HAProxy was not reloaded");
    let state = haproxy
        .runtime()
        .show_servers_state("web")
        .await
        .expect("show servers state");
    let b_state = state
        .iter()
        .find(|s| s.name == b_name)
        .unwrap_or_else(|| panic!("no {b_name} in {state:?}"));
    assert_eq!(
        b_state.op_state,
        integration_tests::haproxy::OpState::Stopped,
        "the new worker forgot that b is down: {state:?}"
    );
    // And no request reaches b.
    wait_answering(port, &["a"]).await;
    synapse.stop().await;
}

/// `state_file_path`: a synapse that ran with etcd saved the backends; a new synapse
/// started with etcd down and haproxy.cfg gone writes haproxy.cfg from the state file
/// (after the grace period for the registry), HAProxy starts on it and routes to the
/// saved backends; once etcd is back, its set replaces the file's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_from_the_state_file_with_etcd_down_and_no_haproxy_cfg() {
    let mut world = World::start().await;
    let port = free_port();
    let web = world.service("web", port, "");
    let state = world.path("synapse-state.json");
    let extra = format!(r#", "state_file_path": "{}""#, state.display());
    let path = world.write_config_with(std::slice::from_ref(&web), "", &extra, "");
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    world.register("web", "a", &a).await;
    world.register("web", "b", &b).await;
    {
        let synapse = Synapse::start_reloading(&path).await;
        let _haproxy = Haproxy::start_for_synapse(world.dir.path()).await;
        wait_answering(port, &["a", "b"]).await;
        eventually(TIMEOUT, || async {
            let text = std::fs::read_to_string(&state).unwrap_or_default();
            let (saved, _) = synapse::state_file::parse(
                &text,
                Duration::from_secs(3600),
                synapse::state_file::unix_now(),
            );
            let names: BTreeSet<String> = saved
                .values()
                .flat_map(|c| c.backends.iter().map(|b| b.name.to_string()))
                .collect();
            if names == BTreeSet::from(["a".to_owned(), "b".to_owned()]) {
                Ok(())
            } else {
                Err(format!("state file holds {names:?}: {text}"))
            }
        })
        .await;
        synapse.stop().await;
    }
    // HAProxy stopped (dropped above), its config gone, etcd down.
    std::fs::remove_file(world.path("haproxy.cfg")).expect("remove haproxy.cfg");
    let _ = std::fs::remove_file(world.path("master.sock"));
    world.etcd_server.stop().await;

    let synapse = Synapse::start_reloading(&path).await;
    let haproxy = Haproxy::start_for_synapse(world.dir.path()).await;
    wait_answering(port, &["a", "b"]).await;
    // (The apply is complete once HAProxy, started on the file, has been reloaded.)
    eventually(TIMEOUT, || async {
        let status = synapse.counters.services.snapshot();
        let web = &status.services["web"];
        if web.applied && web.source == Some(synapse::status::Source::LastKnownGood) {
            assert_eq!(web.fresh, None, "etcd never answered this synapse: {web:?}");
            Ok(())
        } else {
            Err(format!("{web:?}"))
        }
    })
    .await;

    // etcd back, b deregistered meanwhile: the registry's set replaces the file's.
    world.etcd_server.restart().await;
    world.client = world.etcd_server.client().await;
    let key = World::service_path("web").nerve_key(
        &InstanceId::new("b").expect("instance id"),
        &ServiceName::new("web").expect("service name"),
        1,
    );
    world
        .client
        .kv_client()
        .delete(key, None)
        .await
        .expect("delete b");
    wait_answering(port, &["a"]).await;
    drop(haproxy);
    synapse.stop().await;
}

/// The dry-run report with the test's paths and ports replaced by names.
fn normalized(report: &str, world: &World, ports: &[(u16, &str)]) -> String {
    let mut text = report.replace(&world.dir.path().display().to_string(), "<dir>");
    for (port, name) in ports {
        text = text.replace(&port.to_string(), name);
    }
    text
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(name)
}

/// Runs the dry run, checks it against the golden file, and checks that it changed
/// nothing (haproxy.cfg's bytes, HAProxy's servers and worker).
async fn diff_golden(
    world: &World,
    path: &std::path::Path,
    haproxy: &Haproxy,
    ports: &[(u16, &str)],
    name: &str,
) -> synapse::dry_run::DryRun {
    let config = synapse::Config::load(path).expect("config");
    let cfg = std::fs::read_to_string(world.path("haproxy.cfg")).expect("haproxy.cfg");
    let servers = haproxy
        .runtime()
        .show_servers_state("web")
        .await
        .expect("state");
    let workers = haproxy.master().worker_pids().await.expect("workers");
    let report = synapse::dry_run::dry_run(&config, TIMEOUT)
        .await
        .expect("dry run");
    integration_tests::check_golden(&golden(name), &normalized(&report.render(), world, ports));
    assert_eq!(
        std::fs::read_to_string(world.path("haproxy.cfg")).expect("haproxy.cfg"),
        cfg,
        "the dry run wrote haproxy.cfg"
    );
    assert_eq!(
        haproxy
            .runtime()
            .show_servers_state("web")
            .await
            .expect("state"),
        servers,
        "the dry run changed HAProxy's servers"
    );
    assert_eq!(
        haproxy.master().worker_pids().await.expect("workers"),
        workers,
        "the dry run reloaded HAProxy"
    );
    report
}

/// `synapse diff` against real etcd and HAProxy: a registration made while no synapse
/// ran (runtime commands, no reload), then a changed backend line (a reload), then
/// nothing to do. After each dry run, a real synapse does exactly what it said: the
/// same number of runtime commands, a reload only when announced, and haproxy.cfg
/// byte for byte the text the diff showed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diff_shows_what_the_next_run_does_and_changes_nothing() {
    let world = World::start().await;
    let port = free_port();
    // Server lines by name, so that the golden text does not depend on the ports.
    let seed = r#", "server_order_seed": 1"#;
    let asc = r#", "backend_order": "asc""#;
    let web = world.service_with("web", port, "", asc);
    let path = world.write_config_with(std::slice::from_ref(&web), "", seed, "");
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let ports = [
        (port, "<port>"),
        (a.port(), "<port-a>"),
        (b.port(), "<port-b>"),
    ];
    world.register("web", "a", &a).await;
    let synapse = Synapse::start_reloading(&path).await;
    let haproxy = Haproxy::start_for_synapse(world.dir.path()).await;
    eventually(TIMEOUT, || async { synapse.reloads() >= 1 }).await;
    wait_answering(port, &["a"]).await;
    synapse.stop().await;

    // 1. b registered while no synapse runs: runtime commands only.
    world.register("web", "b", &b).await;
    let report = diff_golden(&world, &path, &haproxy, &ports, "synapse-diff-runtime.txt").await;
    assert!(report.changes());
    assert!(report.preview.reload.is_none());
    let synapse = Synapse::start_reloading(&path).await;
    wait_answering(port, &["a", "b"]).await;
    eventually(TIMEOUT, || async {
        std::fs::read_to_string(world.path("haproxy.cfg")).unwrap_or_default()
            == report.preview.rendered
    })
    .await;
    assert_eq!(
        synapse.get(|c| &c.runtime_commands),
        report.preview.commands.len() as u64
    );
    assert_eq!(synapse.reloads(), 0);
    synapse.stop().await;

    // 2. A backend line changed in the config: a reload, and why.
    let web = world.service_with("web", port, r#""http-response set-header X-Diff yes""#, asc);
    world.write_config_with(std::slice::from_ref(&web), "", seed, "");
    let report = diff_golden(&world, &path, &haproxy, &ports, "synapse-diff-reload.txt").await;
    assert!(report.changes());
    assert!(report.preview.reload.is_some());
    let synapse = Synapse::start_reloading(&path).await;
    eventually(TIMEOUT, || async { synapse.reloads() == 1 }).await;
    let r = http_get(loopback(port), "/").await.expect("request");
    assert_eq!(r.header("x-diff"), Some("yes"));
    assert_eq!(
        std::fs::read_to_string(world.path("haproxy.cfg")).expect("haproxy.cfg"),
        report.preview.rendered
    );
    assert_eq!(synapse.get(|c| &c.runtime_commands), 0);
    synapse.stop().await;

    // 3. Nothing to do.
    let report = diff_golden(&world, &path, &haproxy, &ports, "synapse-diff-none.txt").await;
    assert!(!report.changes(), "{}", report.render());
}
