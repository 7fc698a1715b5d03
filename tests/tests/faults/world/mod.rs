//! The world every scenario runs in: etcd (one member behind per-daemon fault proxies,
//! or a 3-member cluster), three hosts each with a backend and a nerve process, synapse
//! and HAProxy routing `web` to them; [`Setup`] says how a scenario's world differs.

mod registry;

pub(crate) use registry::put_fillers;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use common::etcd::{Auth, EtcdSettings};
use common::Secret;
use etcd_client::Client;
use integration_tests::{
    eventually, free_port, http_get, init_tracing, loopback, Backend, Etcd, EtcdCluster,
    EtcdGrpcProxy, FaultProxy, Haproxy, InProcessSynapse as Synapse, Load, LoadOptions, Workdir,
};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::daemon::Daemon;
use crate::observe::{haproxy_check, metric};
use crate::profile::{TIMEOUT, TTL};
use crate::tmpfs::Tmpfs;

/// etcd: one member, or a 3-member cluster.
pub(crate) enum Registry {
    Single(Etcd),
    Cluster(EtcdCluster),
}

impl Registry {
    pub(crate) fn endpoints(&self) -> Vec<String> {
        match self {
            Self::Single(e) => e.endpoints(),
            Self::Cluster(c) => c.endpoints(),
        }
    }

    pub(crate) async fn client(&self) -> Client {
        match self {
            Self::Single(e) => e.client().await,
            Self::Cluster(c) => c.client().await,
        }
    }

    pub(crate) fn settings(&self) -> EtcdSettings {
        match self {
            Self::Single(e) => e.settings(),
            Self::Cluster(c) => c.settings(),
        }
    }
}

/// A simulated host: a backend, and the nerve that checks and registers it (through its
/// own fault proxy when the world is a single etcd).
pub(crate) struct Host {
    pub(crate) id: String,
    pub(crate) backend: Backend,
    pub(crate) nerve: Daemon,
    pub(crate) proxy: Option<FaultProxy>,
}

/// How a world differs from the default one (3 hosts on one etcd behind fault proxies).
#[derive(Default)]
pub(crate) struct Setup {
    /// A 3-member cluster, reached directly (no fault proxies).
    pub(crate) cluster: bool,
    /// More flags for etcd.
    pub(crate) etcd_args: &'static [&'static str],
    /// More `defaults` lines of the rendered haproxy.cfg.
    pub(crate) defaults: Vec<String>,
    /// haproxy.cfg (and synapse's temp files) live in `<dir>/cfg`, a tmpfs of this size.
    pub(crate) cfg_tmpfs: Option<&'static str>,
    /// `web`'s `server_options` (default: `check inter 500 rise 2 fall 2`).
    pub(crate) server_options: Option<&'static str>,
    /// More keys of the `web` service, each with a leading comma.
    pub(crate) service_extra: &'static str,
    /// synapse changes servers through HAProxy's runtime API (its stats socket) and
    /// reloads only when it must.
    pub(crate) runtime_api: bool,
    /// etcd auth on: every client (nerves, synapse, the harness) is `root`.
    pub(crate) auth: bool,
    /// The nerves' `reconcile_interval` in seconds (default 2).
    pub(crate) nerve_reconcile: Option<u64>,
    /// The etcd timings of reliability §4.1 (keepalive 2 s / 2 s, requests 5 s) instead
    /// of the suite's tighter ones (1 s / 1 s, requests 1–2 s: partitions noticed fast),
    /// for a scenario whose round trip is itself a second (S26).
    pub(crate) spec_timeouts: bool,
    /// A cluster whose peers reach each other through peer proxies (S09), synapse
    /// pinned to a follower: the other members are in its endpoint list only through
    /// `standby` proxies, which refuse connections until a scenario lets them pass.
    pub(crate) isolatable: bool,
    /// A 3-member cluster that synapse reaches only through an etcd gRPC proxy (a rack's
    /// shared proxy, docs/scaling.md); the nerves reach the members directly.
    pub(crate) grpc_proxy: bool,
}

/// The etcd password of the `auth` worlds (a test cluster's, on loopback).
pub(crate) const AUTH_PASSWORD: &str = "faults-root";

pub(crate) struct World {
    // First: unmounted before the dir is removed.
    pub(crate) cfg_tmpfs: Option<Tmpfs>,
    pub(crate) dir: Workdir,
    pub(crate) cfg_path: PathBuf,
    pub(crate) setup: Setup,
    pub(crate) registry: Registry,
    pub(crate) client: Client,
    pub(crate) path: String,
    pub(crate) port: u16,
    /// synapse's admin endpoint (`/metrics`).
    pub(crate) admin: u16,
    pub(crate) synapse_proxy: Option<FaultProxy>,
    /// `isolatable` worlds: the member synapse is pinned to, and the proxies to the
    /// others in its endpoint list.
    pub(crate) pinned: Option<usize>,
    pub(crate) standby: Vec<FaultProxy>,
    /// `grpc_proxy` worlds: the etcd gRPC proxy synapse watches through.
    pub(crate) grpc_proxy: Option<EtcdGrpcProxy>,
    pub(crate) synapse: Option<Synapse>,
    pub(crate) haproxy: Option<Haproxy>,
    pub(crate) hosts: Vec<Host>,
}

impl World {
    /// etcd (`cluster`: 3 members, else 1 behind per-daemon fault proxies), three hosts
    /// a, b, c registered by their nerves, synapse and HAProxy routing `web` to them.
    pub(crate) async fn start(test: &str, cluster: bool) -> Self {
        Self::start_with(
            test,
            Setup {
                cluster,
                ..Setup::default()
            },
        )
        .await
    }

    pub(crate) async fn start_with(test: &str, setup: Setup) -> Self {
        init_tracing();
        let registry = if setup.isolatable {
            Registry::Cluster(EtcdCluster::start_with_peer_proxies(3).await)
        } else if setup.cluster || setup.grpc_proxy {
            Registry::Cluster(EtcdCluster::start_with_args(3, setup.etcd_args).await)
        } else {
            Registry::Single(Etcd::start_with_args(setup.etcd_args).await)
        };
        let client = if setup.auth {
            enable_auth(&registry).await
        } else {
            registry.client().await
        };
        let synapse_proxy = match &registry {
            Registry::Single(e) => Some(FaultProxy::start(e.client_addr()).await),
            Registry::Cluster(_) => None,
        };
        let mut pinned = None;
        let mut standby = Vec::new();
        if let (true, Registry::Cluster(c)) = (setup.isolatable, &registry) {
            let follower = (c.leader().await + 1) % c.len();
            for i in (0..c.len()).filter(|i| *i != follower) {
                let proxy = FaultProxy::start(c.member(i).client_addr()).await;
                proxy.reset();
                standby.push(proxy);
            }
            pinned = Some(follower);
        }
        let grpc_proxy = if setup.grpc_proxy {
            Some(EtcdGrpcProxy::start(registry.endpoints()).await)
        } else {
            None
        };
        let dir = Workdir::new();
        let (cfg_tmpfs, cfg_path) = match setup.cfg_tmpfs {
            Some(size) => {
                let tmpfs = Tmpfs::mount(&dir.join("cfg"), size);
                // HAProxy reads `<dir>/haproxy.cfg`; synapse writes in the tmpfs.
                let cfg = dir.join("cfg/haproxy.cfg");
                std::os::unix::fs::symlink(&cfg, dir.join("haproxy.cfg")).expect("link");
                (Some(tmpfs), cfg)
            }
            None => (None, dir.join("haproxy.cfg")),
        };
        let mut w = Self {
            cfg_tmpfs,
            dir,
            cfg_path,
            setup,
            registry,
            client,
            path: format!("/faults/{test}/web"),
            port: free_port(),
            admin: free_port(),
            synapse_proxy,
            pinned,
            standby,
            grpc_proxy,
            synapse: None,
            haproxy: None,
            hosts: Vec::new(),
        };
        for id in ["a", "b", "c"] {
            w.add_host(id).await;
        }
        w.wait_registered(&["a", "b", "c"]).await;
        w.synapse = Some(Synapse::start(&w.synapse_config()));
        w.start_haproxy().await;
        w.routes_to(&["a", "b", "c"]).await;
        // synapse's start-up reload (which may retry while HAProxy starts) is done before
        // a scenario counts reloads.
        eventually(TIMEOUT, || async { w.synapse().reloads() >= 1 }).await;
        w
    }

    /// The `username`/`password` keys of an etcd settings object, when auth is on.
    pub(crate) fn credentials(&self) -> Value {
        if self.setup.auth {
            json!({"username": "root", "password": AUTH_PASSWORD})
        } else {
            json!({})
        }
    }

    pub(crate) fn nerve_config(&self, id: &str, port: u16, endpoints: Vec<String>) -> Value {
        let request_timeout = if self.setup.spec_timeouts { 5 } else { 1 };
        let mut etcd = json!({"endpoints": endpoints, "dial_timeout": 1,
                              "request_timeout": request_timeout});
        if let (Some(e), Value::Object(c)) = (etcd.as_object_mut(), self.credentials()) {
            e.extend(c);
        }
        json!({
            "instance_id": format!("host-{id}"),
            "etcd": etcd,
            "lease_ttl": TTL.as_secs(),
            "reconcile_interval": self.setup.nerve_reconcile.unwrap_or(2),
            "shutdown_timeout": 2,
            // Its own port: the hosts' nerves would share the default one, and all but
            // the first would warn (S24 counts a nerve's warnings).
            "admin_listen": loopback(free_port()).to_string(),
            "services": {"web": {
                "host": "127.0.0.1", "port": port, "reporter_type": "etcd",
                "etcd_path": self.path, "check_interval": 0.25,
                "checks": [{"type": "http", "uri": "/health", "timeout": 0.2, "rise": 2, "fall": 3}],
            }},
        })
    }

    pub(crate) async fn add_host(&mut self, id: &str) {
        self.add_host_with_env(id, Vec::new()).await;
    }

    /// A host whose nerve runs with more environment variables (S23: libfaketime).
    pub(crate) async fn add_host_with_env(&mut self, id: &str, env: Vec<(&'static str, String)>) {
        let backend = Backend::start(id).await;
        let proxy = match &self.registry {
            Registry::Single(e) => Some(FaultProxy::start(e.client_addr()).await),
            Registry::Cluster(_) => None,
        };
        let endpoints = proxy
            .as_ref()
            .map_or_else(|| self.registry.endpoints(), |p| vec![p.endpoint()]);
        let config = self.nerve_config(id, backend.port(), endpoints);
        let nerve = Daemon::nerve(&self.dir, &format!("nerve-{id}"), &config, env);
        self.hosts.push(Host {
            id: id.to_owned(),
            backend,
            nerve,
            proxy,
        });
    }

    pub(crate) fn host(&mut self, id: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.id == id)
            .expect("no such host")
    }

    pub(crate) fn synapse_config(&self) -> String {
        let hosts: Vec<String> = match (&self.synapse_proxy, self.pinned) {
            _ if self.grpc_proxy.is_some() => {
                vec![self
                    .grpc_proxy
                    .as_ref()
                    .map(EtcdGrpcProxy::endpoint)
                    .unwrap_or_default()]
            }
            (Some(p), _) => vec![p.endpoint()],
            (None, Some(i)) => std::iter::once(self.registry.endpoints()[i].clone())
                .chain(self.standby.iter().map(FaultProxy::endpoint))
                .collect(),
            (None, None) => self.registry.endpoints(),
        };
        let master = self.dir.join("master.sock");
        format!(
            r#"{{
              "services": {{"web": {{
                "discovery": {{"method": "etcd", "hosts": {hosts}, "path": "{path}",
                               "progress_interval": 1,
                               "etcd": {{"dial_timeout": 1, "request_timeout": {request},
                                         "keepalive_interval": {keepalive},
                                         "keepalive_timeout": {keepalive}{auth}}}}},
                "haproxy": {{"port": {port}, "server_options": "{server_options}",
                             "listen": ["balance roundrobin"]}}{service_extra}
              }}}},
              "debounce": 0.1,
              "debounce_max_wait": 1,
              "admin_listen": "127.0.0.1:{admin}",
              "haproxy": {{
                "config_file_path": "{cfg}",
                "do_checks": true,{runtime_api}
                "reload_command": "[ ! -e {master} ] || echo reload | socat stdio unix-connect:{master}",
                "restart_interval": 1,
                "bind_address": "127.0.0.1",
                "global": ["stats socket {stats} mode 600 level admin expose-fd listeners",
                           "hard-stop-after 5s"],
                "defaults": {defaults}
              }}
            }}"#,
            hosts = serde_json::to_string(&hosts).expect("json"),
            path = self.path,
            port = self.port,
            server_options = self
                .setup
                .server_options
                .unwrap_or("check inter 500 rise 2 fall 2"),
            service_extra = self.setup.service_extra,
            request = if self.setup.spec_timeouts { 5 } else { 2 },
            keepalive = if self.setup.spec_timeouts { 2 } else { 1 },
            auth = match self.credentials() {
                Value::Object(c) if !c.is_empty() => {
                    let text = Value::Object(c).to_string();
                    format!(", {}", &text[1..text.len() - 1])
                }
                _ => String::new(),
            },
            runtime_api = if self.setup.runtime_api {
                format!(
                    r#" "socket_file_path": "{}","#,
                    self.dir.join("stats.sock").display()
                )
            } else {
                String::new()
            },
            admin = self.admin,
            cfg = self.cfg_path().display(),
            master = master.display(),
            stats = self.dir.join("stats.sock").display(),
            defaults = serde_json::to_string(
                &[
                    "mode http",
                    "timeout connect 500ms",
                    "timeout client 10s",
                    "timeout server 10s",
                    "retries 2",
                    "option redispatch 1"
                ]
                .iter()
                .map(|l| (*l).to_owned())
                .chain(self.setup.defaults.iter().cloned())
                .collect::<Vec<String>>()
            )
            .expect("json"),
        )
    }

    /// `synapse_service_stale_seconds{service="web"}` from synapse's `/metrics`.
    pub(crate) async fn stale_seconds(&self) -> f64 {
        metric(
            self.admin,
            "synapse_service_stale_seconds",
            &[("service", "web")],
        )
        .await
        .expect("synapse_service_stale_seconds{service=\"web\"}")
    }

    /// `synapse_rejected_registrations_total{reason}` from synapse's `/metrics` (0 before
    /// the first rejection).
    pub(crate) async fn rejected(&self, reason: &str) -> f64 {
        metric(
            self.admin,
            "synapse_rejected_registrations_total",
            &[("reason", reason)],
        )
        .await
        .unwrap_or(0.0)
    }

    /// `synapse_ready` from synapse's `/metrics`.
    pub(crate) async fn ready(&self) -> f64 {
        metric(self.admin, "synapse_ready", &[])
            .await
            .expect("synapse_ready")
    }

    pub(crate) fn cfg_path(&self) -> PathBuf {
        self.cfg_path.clone()
    }

    pub(crate) fn synapse(&self) -> &Synapse {
        self.synapse.as_ref().expect("synapse")
    }

    pub(crate) async fn start_haproxy(&mut self) {
        let haproxy = Haproxy::start_for_synapse(self.dir.path()).await;
        haproxy.master().reload().await.expect("initial reload");
        self.haproxy = Some(haproxy);
    }

    /// The ports of the first three hosts' backends (a, b, c).
    pub(crate) fn ports(&self) -> Vec<u16> {
        self.hosts
            .iter()
            .take(3)
            .map(|h| h.backend.port())
            .collect()
    }

    /// The backend ids HAProxy has as UP servers in its running config.
    pub(crate) async fn haproxy_up(&self) -> Result<BTreeSet<String>, String> {
        let h = self.haproxy.as_ref().expect("haproxy");
        let rows = h.show_stat().await.map_err(|e| e.to_string())?;
        let ports: BTreeMap<u16, String> = self
            .hosts
            .iter()
            .map(|h| (h.backend.port(), h.id.clone()))
            .collect();
        Ok(rows
            .iter()
            .filter(|r| r.is_server() && r.get("pxname") == Some("web"))
            .filter(|r| r.status().starts_with("UP"))
            .filter_map(|r| {
                let addr = r.get("addr")?;
                let port: u16 = addr.rsplit(':').next()?.parse().ok()?;
                ports.get(&port).cloned()
            })
            .collect())
    }

    /// Waits until requests reach exactly `want`.
    pub(crate) async fn routes_to(&self, want: &[&str]) -> Duration {
        let started = Instant::now();
        let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
        let port = self.port;
        eventually(TIMEOUT, || {
            let want = want.clone();
            async move {
                let mut seen = BTreeSet::new();
                for _ in 0..(3 * want.len() + 3) {
                    let r = http_get(loopback(port), "/")
                        .await
                        .map_err(|e| e.to_string())?;
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
        started.elapsed()
    }

    pub(crate) fn load(&self) -> Load {
        Load::start(
            loopback(self.port),
            LoadOptions {
                rate: 50,
                timeout: Duration::from_secs(1),
                max_requests: 50 * 400,
                max_duration: Duration::from_secs(400),
            },
        )
    }

    pub(crate) fn cfg(&self) -> String {
        std::fs::read_to_string(self.cfg_path()).expect("haproxy.cfg")
    }

    pub(crate) async fn stop(mut self) {
        haproxy_check(&self.cfg_path());
        if let Some(s) = self.synapse.take() {
            assert!(s.is_running(), "synapse exited");
            s.stop().await;
        }
    }
}

/// Turns etcd's auth on (user `root`, role `root`) and returns a client logged in as
/// root.
pub(crate) async fn enable_auth(registry: &Registry) -> Client {
    let mut admin = registry.client().await;
    admin
        .user_add("root", AUTH_PASSWORD, None)
        .await
        .expect("add root");
    // The built-in role may or may not exist yet.
    let _ = admin.role_add("root").await;
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.auth_enable().await.expect("enable auth");
    let settings = EtcdSettings {
        auth: Some(Auth {
            username: "root".to_owned(),
            password: Secret::new(AUTH_PASSWORD),
        }),
        ..registry.settings()
    };
    // The harness's own client refreshes its token whatever the product code does.
    let options = settings
        .connect_options()
        .expect("options")
        .with_auto_token_refresh(true);
    Client::connect(&settings.endpoints, Some(options))
        .await
        .expect("a root client")
}
