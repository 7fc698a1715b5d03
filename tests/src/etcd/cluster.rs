//! An etcd cluster of N members on loopback, with per-member faults (stop, kill, restart,
//! pause, resume) and, through peer proxies, a member isolated from its peers.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::etcd::EtcdSettings;
use etcd_client::Client;
use nix::sys::signal::Signal;
use tempfile::TempDir;

use super::member::EtcdMember;
use super::{
    connect, data_tempdir, test_settings, StartError, PROBE_TIMEOUT, START_ATTEMPTS, START_TIMEOUT,
    STOP_GRACE,
};
use crate::eventually::eventually;
use crate::fault_proxy::FaultProxy;
use crate::ports::{free_port, loopback};
use crate::tls::{ClientTls, TestPki};

static CLUSTERS: AtomicU64 = AtomicU64::new(0);

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
