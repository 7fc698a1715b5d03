//! One service `web` routed by a real HAProxy from an in-process synapse whose
//! discovery a test chooses (ec2tag against moto, dns against dnsmasq, ...): the config,
//! HAProxy on synapse's first haproxy.cfg, and real requests through it.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::eventually::eventually;
use crate::haproxy::{Haproxy, HaproxyOptions};
use crate::http::http_get;
use crate::ports::{free_port, loopback};
use crate::workdir::Workdir;

/// How long a routing change may take to show through HAProxy (generous: a loaded machine).
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(20);

/// haproxy.cfg, HAProxy and the bits of a synapse config every test here shares.
pub struct World {
    pub dir: Workdir,
    pub port: u16,
    pub haproxy: Option<Haproxy>,
}

impl World {
    pub fn new() -> Self {
        crate::init_tracing();
        Self {
            dir: Workdir::new(),
            port: free_port(),
            haproxy: None,
        }
    }

    /// A synapse config with one service `web` whose `discovery` and extra service keys
    /// are given.
    pub fn config(&self, discovery: &str, extra: &str) -> String {
        let master = self.dir.join("master.sock");
        format!(
            r#"{{
              "services": {{
                "web": {{
                  "discovery": {discovery},
                  "haproxy": {{"port": {port}, "listen": ["balance roundrobin"], "server_options": "check inter 200 fall 1 rise 1"}}
                  {extra}
                }}
              }},
              "debounce": 0.05,
              "debounce_max_wait": 0.3,
              "haproxy": {{
                "config_file_path": "{cfg}",
                "do_checks": true,
                "reload_command": "[ ! -e {master} ] || echo reload | socat stdio unix-connect:{master}",
                "restart_interval": 0.2,
                "bind_address": "127.0.0.1",
                "global": ["stats socket {sock} mode 600 level admin expose-fd listeners"],
                "defaults": ["mode http", "timeout connect 1s", "timeout client 10s",
                             "timeout server 10s", "retries 3", "option redispatch 1"]
              }}
            }}"#,
            port = self.port,
            cfg = self.dir.join("haproxy.cfg").display(),
            sock = self.dir.join("admin.sock").display(),
            master = master.display(),
        )
    }

    /// Waits for synapse's first haproxy.cfg, starts HAProxy on it, and links its master
    /// socket where synapse's reload command looks; one confirmed reload then picks up
    /// anything written between the start and the link.
    pub async fn start_haproxy(&mut self) {
        let cfg = self.dir.join("haproxy.cfg");
        eventually(ROUTE_TIMEOUT, || async { cfg.exists() }).await;
        let haproxy =
            Haproxy::start(HaproxyOptions::new(&cfg).stats_socket(self.dir.join("admin.sock")))
                .await;
        std::os::unix::fs::symlink(haproxy.master_socket(), self.dir.join("master.sock"))
            .expect("link master socket");
        haproxy.master().reload().await.expect("initial reload");
        self.haproxy = Some(haproxy);
    }

    pub fn haproxy_cfg(&self) -> String {
        self.dir.read("haproxy.cfg")
    }

    /// The backend ids that answer `n` requests through HAProxy; a failed request is an
    /// error.
    pub async fn answering(&self, n: usize) -> Result<BTreeSet<String>, String> {
        let mut ids = BTreeSet::new();
        for _ in 0..n {
            let r = http_get(loopback(self.port), "/")
                .await
                .map_err(|e| e.to_string())?;
            if r.status != 200 {
                return Err(format!("status {}", r.status));
            }
            ids.insert(r.body);
        }
        Ok(ids)
    }

    /// Waits until requests are answered by exactly `want`.
    pub async fn wait_answering(&self, want: &[&str]) {
        let want: BTreeSet<String> = want.iter().map(|s| (*s).to_owned()).collect();
        eventually(ROUTE_TIMEOUT, || async {
            let got = self.answering(want.len() * 4).await?;
            if got == want {
                Ok(())
            } else {
                Err(format!("answering {got:?}, want {want:?}"))
            }
        })
        .await;
    }
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}
