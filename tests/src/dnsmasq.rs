//! A real DNS server on loopback: Debian's `dnsmasq` on a free port of 127.0.0.1,
//! answering from a hosts file the test rewrites ([`Dnsmasq::set_hosts`], which makes it
//! re-read the file) and with static SRV records, and nothing else (no upstream
//! servers, no `/etc/hosts`). Answers have a TTL of 0, so nothing caches them.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::ports::{free_port, wait_listening};
use crate::process::{ChildProcess, OnDrop};
use crate::workdir::Workdir;

/// A running dnsmasq.
#[derive(Debug)]
pub struct Dnsmasq {
    process: Option<ChildProcess>,
    port: u16,
    dir: Workdir,
}

/// An SRV record: `(name, target, port)`, e.g. `("_web._tcp.test", "web.test", 8080)`.
pub type Srv<'a> = (&'a str, &'a str, u16);

impl Dnsmasq {
    /// Starts dnsmasq answering `hosts` (`(name, address)`; one name may have several
    /// addresses) and the SRV records `srv`.
    pub async fn start(hosts: &[(&str, &str)], srv: &[Srv<'_>]) -> Self {
        let dir = Workdir::new();
        let port = free_port();
        let mut dnsmasq = Self {
            process: None,
            port,
            dir,
        };
        dnsmasq.write_hosts(hosts);
        let mut cmd = Command::new("dnsmasq");
        cmd.arg("--keep-in-foreground")
            .arg(format!("--port={port}"))
            .args(["--listen-address=127.0.0.1", "--bind-interfaces"])
            .args(["--no-resolv", "--no-hosts", "--no-poll", "--local-ttl=0"])
            .arg(format!("--addn-hosts={}", dnsmasq.hosts_file().display()))
            .arg("--pid-file=")
            .arg("--log-facility=-")
            .arg("--log-queries");
        if crate::process::running_as_root() {
            // Keep root: the hosts file is in a directory only we may read.
            cmd.arg("--user=root");
        }
        for (name, target, port) in srv {
            cmd.arg(format!("--srv-host={name},{target},{port}"));
        }
        let process = ChildProcess::spawn(cmd, &dnsmasq.dir.join("dnsmasq.log"), OnDrop::Kill)
            .unwrap_or_else(|e| panic!("cannot start dnsmasq (scripts/install-deps): {e}"));
        dnsmasq.process = Some(process);
        // Up when it answers over TCP (it listens on both).
        wait_listening(port, Duration::from_secs(20), "dnsmasq").await;
        dnsmasq
    }

    /// Where it listens (UDP and TCP), for synapse's `nameserver`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn hosts_file(&self) -> std::path::PathBuf {
        self.dir.join("hosts")
    }

    fn write_hosts(&self, hosts: &[(&str, &str)]) {
        let text: String = hosts
            .iter()
            .map(|(name, addr)| format!("{addr} {name}\n"))
            .collect();
        // Written whole, then renamed: dnsmasq never reads half a file.
        let tmp = self.dir.join("hosts.tmp");
        std::fs::write(&tmp, text).expect("write hosts");
        std::fs::rename(&tmp, self.hosts_file()).expect("rename hosts");
    }

    /// Replaces the zone's host records; dnsmasq re-reads them on SIGHUP.
    pub fn set_hosts(&self, hosts: &[(&str, &str)]) {
        self.write_hosts(hosts);
        if let Some(p) = &self.process {
            p.signal(Signal::SIGHUP);
        }
    }

    /// Stops it: every query then times out (nothing else listens on its port).
    pub fn stop(&mut self) {
        self.process = None;
    }
}
