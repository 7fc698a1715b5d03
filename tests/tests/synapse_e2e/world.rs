//! One test's world (etcd behind a cuttable [`Proxy`], a workdir, synapse's config,
//! HAProxy) and what the tests read from it: the backends requests reach, `haproxy -c`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::{Host, InstanceId, Port, Registration, ServiceName, ServicePath};
use etcd_client::Client;
use integration_tests::{
    eventually, http_get, init_tracing, loopback, Backend, Etcd, Haproxy, HaproxyOptions, Workdir,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::TIMEOUT;

/// A TCP forwarder to `target` that can refuse and drop every connection (`cut`) and
/// accept them again (`heal`).
pub(crate) struct Proxy {
    pub(crate) addr: SocketAddr,
    pub(crate) open: Arc<AtomicBool>,
    pub(crate) conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    pub(crate) accept: JoinHandle<()>,
}

impl Proxy {
    pub(crate) async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind(loopback(0)).await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let open = Arc::new(AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (o, c) = (open.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().expect("conns").push(task);
            }
        });
        Self {
            addr,
            open,
            conns,
            accept,
        }
    }

    pub(crate) fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for task in self.conns.lock().expect("conns").drain(..) {
            task.abort();
        }
    }

    pub(crate) fn heal(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// One test's world: etcd (behind a cuttable proxy), a workdir for haproxy.cfg, and
/// HAProxy once synapse has written its first config.
pub(crate) struct World {
    pub(crate) dir: Workdir,
    pub(crate) etcd: Etcd,
    pub(crate) proxy: Proxy,
    pub(crate) client: Client,
    pub(crate) prefix: String,
    pub(crate) haproxy: Option<Haproxy>,
}

impl World {
    pub(crate) async fn start(test: &str) -> Self {
        init_tracing();
        let etcd = Etcd::start().await;
        let proxy = Proxy::start(etcd.client_addr()).await;
        let client = etcd.client().await;
        Self {
            dir: Workdir::new(),
            etcd,
            proxy,
            client,
            prefix: format!("/it/{test}"),
            haproxy: None,
        }
    }

    pub(crate) fn cfg_path(&self) -> PathBuf {
        self.dir.join("haproxy.cfg")
    }

    pub(crate) fn path(&self, service: &str) -> ServicePath {
        ServicePath::new(&format!("{}/{service}", self.prefix)).expect("service path")
    }

    /// A synapse config: each `(service, port, extra service keys)` watches
    /// `<prefix>/<service>` through the proxy.
    pub(crate) fn config(&self, services: &[(&str, u16, &str)]) -> String {
        let services: Vec<String> = services
            .iter()
            .map(|(name, port, extra)| {
                format!(
                    r#""{name}": {{
                        "discovery": {{"method": "etcd", "hosts": ["{proxy}"], "path": "{path}",
                                       "progress_interval": 0.5,
                                       "etcd": {{"dial_timeout": 1, "request_timeout": 2,
                                                 "keepalive_interval": 1, "keepalive_timeout": 1}}}},
                        "haproxy": {{"port": {port}, "listen": ["balance roundrobin"]}}{extra}
                    }}"#,
                    proxy = self.proxy.addr,
                    path = self.path(name),
                )
            })
            .collect();
        let master = self.dir.join("master.sock");
        format!(
            r#"{{
              // synapse in an integration test
              "services": {{ {services} }},
              "debounce": 0.05,
              "debounce_max_wait": 0.5,
              "haproxy": {{
                "config_file_path": "{cfg}",
                "do_checks": true,
                "reload_command": "[ ! -e {master} ] || echo reload | socat stdio unix-connect:{master}",
                "restart_interval": 0.3,
                "bind_address": "127.0.0.1",
                "server_order_seed": 1,
                "global": ["stats socket {stats} mode 600 level admin expose-fd listeners"],
                "defaults": ["mode http", "timeout connect 1s", "timeout client 10s",
                             "timeout server 10s", "retries 2", "option redispatch 1"]
              }}
            }}"#,
            services = services.join(","),
            cfg = self.cfg_path().display(),
            master = master.display(),
            stats = self.dir.join("stats.sock").display(),
        )
    }

    /// Waits for synapse's first haproxy.cfg, starts HAProxy on it, and links its master
    /// socket where synapse's reload command looks. One confirmed reload afterwards picks
    /// up anything written between the start and the link.
    pub(crate) async fn start_haproxy(&mut self) {
        let cfg = self.cfg_path();
        eventually(TIMEOUT, || async { cfg.exists() }).await;
        let haproxy =
            Haproxy::start(HaproxyOptions::new(&cfg).stats_socket(self.dir.join("stats.sock")))
                .await;
        std::os::unix::fs::symlink(haproxy.master_socket(), self.dir.join("master.sock"))
            .expect("link master socket");
        haproxy.master().reload().await.expect("initial reload");
        self.haproxy = Some(haproxy);
    }

    pub(crate) async fn register(&self, service: &str, instance: &str, backend: &Backend) {
        let reg = Registration {
            host: Host::Ip(backend.addr().ip()),
            port: Port::new(backend.port()).expect("port"),
            name: InstanceId::new(instance).expect("instance id"),
            weight: None,
            haproxy_server_options: None,
            labels: Default::default(),
        };
        self.put_raw(&self.key(service, instance), reg.encode().as_bytes())
            .await;
    }

    pub(crate) fn key(&self, service: &str, instance: &str) -> String {
        self.path(service).nerve_key(
            &InstanceId::new(instance).expect("instance id"),
            &ServiceName::new(service).expect("service name"),
            1,
        )
    }

    pub(crate) async fn put_raw(&self, key: &str, value: &[u8]) {
        self.client
            .kv_client()
            .put(key.as_bytes().to_vec(), value.to_vec(), None)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
    }

    pub(crate) async fn deregister(&self, service: &str, instance: &str) {
        let key = self.key(service, instance);
        self.client
            .kv_client()
            .delete(key.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("delete {key}: {e}"));
    }

    pub(crate) fn server_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.cfg_path())
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .map(str::to_owned)
            .collect()
    }
}

/// The backend ids that answer `n` requests to `port`.
pub(crate) async fn ids_seen(port: u16, n: usize) -> Result<BTreeSet<String>, String> {
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
#[track_caller]
pub(crate) fn routes_to<'a>(
    port: u16,
    want: &'a [&'a str],
) -> impl std::future::Future<Output = ()> + 'a {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(TIMEOUT, move || {
        let want = want.clone();
        async move {
            let seen = ids_seen(port, 2 * want.len().max(1) + 4).await?;
            if seen == want {
                Ok(())
            } else {
                Err(format!("routed to {seen:?}, want {want:?}"))
            }
        }
    })
}

pub(crate) fn haproxy_check(path: &Path) {
    let out = std::process::Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(path)
        .output()
        .expect("haproxy -c");
    assert!(
        out.status.success(),
        "haproxy -c failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
