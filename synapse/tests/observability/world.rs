//! One test's world: the real `synapse` binary ([`SynapseProcess`]) on a config over a
//! real etcd, backends and a managed HAProxy, and how the tests wait for routing.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use common::{Host, InstanceId, Port, Registration, ServerOptions, ServiceName, ServicePath};
use etcd_client::Client;
use integration_tests::{
    eventually, free_port, http_get, init_tracing, loopback, scrape, Backend, Etcd, Scrape, Workdir,
};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::TIMEOUT;

/// The synapse binary on a config file in a workdir; stderr to `synapse.log` (printed
/// if the test fails). On drop: SIGTERM (synapse stops its managed HAProxy), SIGKILL
/// after a grace period, then the managed HAProxy's process group by the PID in its pid
/// file, if it is still that HAProxy.
pub(crate) struct SynapseProcess {
    pub(crate) child: Option<Child>,
    pub(crate) log: PathBuf,
    pub(crate) config: PathBuf,
    pub(crate) pid_file: PathBuf,
}

impl SynapseProcess {
    pub(crate) fn start(dir: &Workdir, config: &str, env: &[(&str, &str)]) -> Self {
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

    pub(crate) fn signal(&self, signal: Signal) {
        let child = self.child.as_ref().expect("synapse already reaped");
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        kill(pid, signal).expect("signal synapse");
    }

    pub(crate) async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
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

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The managed HAProxy master's PID, while it runs this test's config.
    pub(crate) fn haproxy_master(&self) -> Option<u32> {
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
pub(crate) struct World {
    pub(crate) dir: Workdir,
    pub(crate) etcd: Etcd,
    pub(crate) client: Client,
    pub(crate) prefix: String,
    pub(crate) port: u16,
    pub(crate) admin: SocketAddr,
}

impl World {
    pub(crate) async fn start(test: &str) -> Self {
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

    pub(crate) fn path(&self) -> ServicePath {
        ServicePath::new(&format!("{}/web", self.prefix)).expect("service path")
    }

    /// One etcd service `web` on `port`, a managed HAProxy with the runtime API, and
    /// the admin endpoint.
    pub(crate) fn config(&self, restart_interval: f64) -> String {
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

    pub(crate) fn key(&self, instance: &str) -> String {
        self.path().nerve_key(
            &InstanceId::new(instance).expect("instance id"),
            &ServiceName::new("web").expect("service name"),
            1,
        )
    }

    /// Registers `backend` as `instance`; returns the put's revision.
    pub(crate) async fn register(
        &self,
        instance: &str,
        backend: &Backend,
        options: Option<&str>,
    ) -> i64 {
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

    pub(crate) async fn put(&self, key: &str, value: &str) -> i64 {
        let resp = self
            .client
            .kv_client()
            .put(key, value, None)
            .await
            .unwrap_or_else(|e| panic!("put {key}: {e}"));
        resp.header().expect("put header").revision()
    }

    pub(crate) async fn scrape_until(&self, what: &str, ok: impl Fn(&Scrape) -> bool) -> Scrape {
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

    /// `/status` once `ok` holds of it. The counters move inside the apply and `/status` a
    /// moment after it returns, so a status read right after a scrape can be a step behind.
    pub(crate) async fn status_until(&self, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        eventually(TIMEOUT, || async {
            let status = self.status().await;
            if ok(&status) {
                Ok(status)
            } else {
                Err(format!("waiting for {what}; /status:\n{status:#}"))
            }
        })
        .await
    }

    pub(crate) async fn status(&self) -> Value {
        let (code, body) = common::admin::fetch(self.admin, "/status")
            .await
            .expect("GET /status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status is JSON")
    }
}

/// Waits until requests through HAProxy reach exactly the backends `want`.
pub(crate) async fn routes_to(port: u16, want: &[&str]) {
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
