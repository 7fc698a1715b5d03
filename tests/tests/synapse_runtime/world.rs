//! One test's world (etcd, a workdir, synapse's config for one service `web`, HAProxy
//! started as "another container" or by synapse) and what the tests read from it: the
//! backends requests reach, HAProxy's reload count and workers.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use common::{
    Host, InstanceId, Port, Registration, ServerOptions, ServiceName, ServicePath, Weight,
};
use etcd_client::Client;
use integration_tests::{
    eventually, http_get, init_tracing, loopback, Backend, Etcd, Haproxy, HaproxyOptions,
    InProcessSynapse as Synapse, MasterSocket, Workdir,
};

use crate::TIMEOUT;

pub(crate) struct World {
    dir: Workdir,
    _etcd: Etcd,
    pub(crate) etcd_addr: SocketAddr,
    pub(crate) client: Client,
    pub(crate) prefix: String,
}

impl World {
    pub(crate) async fn start(test: &str) -> Self {
        init_tracing();
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        Self {
            dir: Workdir::new(),
            etcd_addr: etcd.client_addr(),
            _etcd: etcd,
            client,
            prefix: format!("/it/{test}"),
        }
    }

    pub(crate) fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    pub(crate) fn service_path(&self) -> ServicePath {
        ServicePath::new(&format!("{}/web", self.prefix)).expect("service path")
    }

    /// A synapse config for one service `web` on `port`, with the runtime API on, the
    /// hitless settings, and `haproxy` keys appended.
    pub(crate) fn config(&self, port: u16, haproxy: &str) -> String {
        format!(
            r#"{{
              "services": {{"web": {{
                "discovery": {{"method": "etcd", "hosts": ["{etcd}"], "path": "{path}"}},
                "haproxy": {{"port": {port},
                             "server_options": "check inter 300ms rise 1 fall 1",
                             "listen": ["balance roundrobin", "option httpchk GET /health"]}}
              }}}},
              "debounce": 0.02,
              "debounce_max_wait": 0.2,
              "haproxy": {{
                "config_file_path": "{cfg}",
                "socket_file_path": "{stats}",
                "use_nerve_weights": true,
                "restart_interval": 0.2,
                "bind_address": "127.0.0.1",
                "server_order_seed": 1,
                "global": ["stats socket {stats} mode 600 level admin expose-fd listeners",
                           "server-state-file {state}", "hard-stop-after 10s"],
                "defaults": ["mode http", "timeout connect 1s", "timeout client 10s",
                             "timeout server 10s", "timeout http-keep-alive 10s",
                             "retries 2", "option redispatch 1",
                             "option idle-close-on-response",
                             "load-server-state-from-file global"]
                {haproxy}
              }}
            }}"#,
            etcd = self.etcd_addr,
            path = self.service_path(),
            cfg = self.path("haproxy.cfg").display(),
            stats = self.path("stats.sock").display(),
            state = self.path("server-state").display(),
        )
    }

    /// Starts HAProxy on synapse's first config, as an external HAProxy ("another
    /// container"), and links its master socket and pid file where synapse looks.
    pub(crate) async fn start_haproxy(&self) -> Haproxy {
        let cfg = self.path("haproxy.cfg");
        eventually(TIMEOUT, || async { cfg.exists() }).await;
        let haproxy =
            Haproxy::start(HaproxyOptions::new(&cfg).stats_socket(self.path("stats.sock"))).await;
        std::os::unix::fs::symlink(haproxy.master_socket(), self.path("master.sock"))
            .expect("link master socket");
        std::os::unix::fs::symlink(haproxy.pidfile(), self.path("haproxy.pid"))
            .expect("link pid file");
        haproxy
    }

    /// synapse with `config(port)` reloading through the master socket, and HAProxy
    /// started on its first config; returns once synapse has reloaded that HAProxy.
    pub(crate) async fn start_with_master_socket(&self, port: u16) -> (Synapse, Haproxy) {
        let text = self.config(
            port,
            &format!(
                r#", "reload_method": "master_socket", "master_socket_path": "{}""#,
                self.path("master.sock").display()
            ),
        );
        let synapse = Synapse::start(&text);
        let haproxy = self.start_haproxy().await;
        // synapse's first config needs one reload of the HAProxy started on it meanwhile.
        eventually(TIMEOUT, || async { synapse.get(|c| &c.reloads) >= 1 }).await;
        (synapse, haproxy)
    }

    pub(crate) fn key(&self, instance: &str) -> String {
        self.service_path().nerve_key(
            &InstanceId::new(instance).expect("instance id"),
            &ServiceName::new("web").expect("service name"),
            1,
        )
    }

    pub(crate) async fn register_with(
        &self,
        instance: &str,
        backend: &Backend,
        weight: Option<u16>,
        options: Option<&str>,
    ) {
        let reg = Registration {
            host: Host::Ip(backend.addr().ip()),
            port: Port::new(backend.port()).expect("port"),
            name: InstanceId::new(instance).expect("instance id"),
            weight: weight.map(|w| Weight::new(w).expect("weight")),
            haproxy_server_options: options.map(|o| ServerOptions::parse(o).expect("options")),
            labels: Default::default(),
        };
        self.client
            .kv_client()
            .put(self.key(instance), reg.encode(), None)
            .await
            .expect("put");
    }

    pub(crate) async fn register(&self, instance: &str, backend: &Backend) {
        self.register_with(instance, backend, None, None).await;
    }

    pub(crate) async fn deregister(&self, instance: &str) {
        self.client
            .kv_client()
            .delete(self.key(instance), None)
            .await
            .expect("delete");
    }

    pub(crate) fn server_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("haproxy.cfg"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .map(|l| l.trim().to_owned())
            .collect()
    }

    /// A synapse (defaults: the guard on, checks on) reloading through the master CLI,
    /// its config text passed through `tweak` first; and HAProxy on its first file.
    pub(crate) async fn with_haproxy(
        &self,
        port: u16,
        tweak: impl FnOnce(String) -> String,
    ) -> (Synapse, Haproxy) {
        let text = self.config(
            port,
            &format!(
                r#", "reload_method": "master_socket", "master_socket_path": "{}""#,
                self.path("master.sock").display()
            ),
        );
        let synapse = Synapse::start(&tweak(text));
        let haproxy = self.start_haproxy().await;
        eventually(TIMEOUT, || async { synapse.get(|c| &c.reloads) >= 1 }).await;
        (synapse, haproxy)
    }
}

/// Backends answering `a`, `b` and `c`.
pub(crate) async fn three_backends() -> (Backend, Backend, Backend) {
    (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    )
}

/// The backend ids that answer `n` requests to `port`.
async fn ids_seen(port: u16, n: usize) -> Result<BTreeSet<String>, String> {
    let mut ids = BTreeSet::new();
    for _ in 0..n {
        let resp = http_get(loopback(port), "/")
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if resp.status != 200 {
            return Err(format!("status {}", resp.status));
        }
        ids.insert(resp.body.trim().to_owned());
    }
    Ok(ids)
}

/// Waits until requests to `port` reach exactly `want`.
pub(crate) async fn routes_to(port: u16, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(TIMEOUT, || {
        let want = want.clone();
        async move {
            let seen = ids_seen(port, 3 * want.len().max(1) + 3).await?;
            if seen == want {
                Ok(())
            } else {
                Err(format!("routed to {seen:?}, want {want:?}"))
            }
        }
    })
    .await;
}

/// HAProxy's reload count and current workers.
pub(crate) async fn generation(master: &MasterSocket) -> (u32, Vec<u32>) {
    // The master CLI may reset a connection while the master re-executes itself (a
    // reload, or a start still settling): ask again.
    let p = eventually(TIMEOUT, || master.show_proc()).await;
    (p.reloads, p.workers)
}
