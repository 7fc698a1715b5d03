//! Real ZooKeeper (Debian's `zookeeper` package: Apache ZooKeeper 3.8 on the JVM) on free
//! loopback ports, each member with its own data dir, for the ZooKeeper reporter and
//! watcher tests: [`ZooKeeper`] (one standalone server) and [`ZkEnsemble`] (a quorum of
//! N, with per-member `kill`/`restart`/`pause`).
//!
//! - The server is started as `java -cp /usr/share/java/zookeeper.jar QuorumPeerMain`
//!   (the jar's manifest names its dependencies), not through `zkServer.sh`, so the PID
//!   the guard holds is the JVM's own.
//! - The admin server (Jetty, port 8080 by default) is switched off; JMX is not enabled.
//! - A member is ready when it answers the `srvr` four-letter word with its mode
//!   (`standalone`, `leader`, `follower`): listening alone is not enough, a member without
//!   quorum accepts connections and refuses sessions. The JVM takes a second or two to
//!   start, more under load, so the wait is generous.
//! - `tickTime` is 200 ms and sessions may be 1–60 s, so tests can choose short sessions
//!   and see them expire in seconds.
//! - [`zk_cli`] runs Debian's `zkCli.sh`, the tool an operator writes znodes with by hand.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ports::free_port;
use crate::process::{ChildProcess, OnDrop};
use crate::workdir::Workdir;

const ZOOKEEPER_JAR: &str = "/usr/share/java/zookeeper.jar";
const ZK_CLI: &str = "/usr/share/zookeeper/bin/zkCli.sh";
/// How long a member may take to start serving (a JVM on a loaded 2-core machine).
pub const ZK_START_TIMEOUT: Duration = Duration::from_secs(90);
/// ZooKeeper's tick: session timeouts are negotiated between 2 and 20 ticks by default;
/// the config widens that to 1–60 s below.
const TICK_MS: u32 = 200;

/// The ports of one member.
#[derive(Debug, Clone, Copy)]
struct MemberPorts {
    client: u16,
    peer: u16,
    election: u16,
}

/// One ZooKeeper server process (standalone or a member of an ensemble).
#[derive(Debug)]
pub struct ZkMember {
    id: usize,
    ports: MemberPorts,
    config: PathBuf,
    log: PathBuf,
    process: Option<ChildProcess>,
}

impl ZkMember {
    fn spawn(&mut self) {
        let mut cmd = Command::new("java");
        cmd.args([
            "-Xms32m",
            "-Xmx192m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Dzookeeper.admin.enableServer=false",
            "-Djava.net.preferIPv4Stack=true",
            "-cp",
            ZOOKEEPER_JAR,
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
        ])
        .arg(&self.config);
        let process = ChildProcess::spawn(cmd, &self.log, OnDrop::Kill).unwrap_or_else(|e| {
            panic!("cannot start ZooKeeper (java; scripts/install-deps installs it): {e}")
        });
        self.process = Some(process);
    }

    /// `127.0.0.1:<client port>`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.ports.client)
    }

    pub fn client_port(&self) -> u16 {
        self.ports.client
    }

    /// Whether its process is running.
    pub fn is_running(&self) -> bool {
        self.process.as_ref().is_some_and(|p| !p.has_exited())
    }

    /// SIGKILLs it (its data dir stays, so [`ZkMember::restart`] brings it back with its
    /// data).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill_and_reap();
        }
    }

    /// Starts it again on the same ports and data dir (does not wait: see
    /// [`ZkMember::wait_serving`]).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGSTOP: the process stays, its sockets stay open, nothing answers.
    pub fn pause(&self) {
        if let Some(p) = &self.process {
            p.signal(Signal::SIGSTOP);
        }
    }

    /// SIGCONT after [`ZkMember::pause`].
    pub fn resume(&self) {
        if let Some(p) = &self.process {
            p.signal(Signal::SIGCONT);
        }
    }

    /// The `Mode:` it reports through the `srvr` four-letter word, if it serves.
    pub async fn mode(&self) -> Option<String> {
        let reply = four_letter_word(self.ports.client, "srvr").await.ok()?;
        reply
            .lines()
            .find_map(|l| l.strip_prefix("Mode: "))
            .map(|m| m.trim().to_owned())
    }

    /// Waits (generously) until it serves requests.
    pub async fn wait_serving(&self) {
        let port = self.ports.client;
        let log = self.log.clone();
        crate::eventually::eventually(ZK_START_TIMEOUT, || async {
            match four_letter_word(port, "srvr").await {
                Ok(reply) if reply.contains("Mode: ") => Ok(()),
                Ok(reply) => Err(format!("not serving yet: {}", reply.trim())),
                Err(e) => Err(format!(
                    "ZooKeeper on 127.0.0.1:{port}: {e}; log {}:\n{}",
                    log.display(),
                    crate::process::log_tail(&log, 20)
                )),
            }
        })
        .await;
    }
}

/// Sends a four-letter word (`srvr`, `ruok`, `cons`, ...) and reads the whole reply.
pub async fn four_letter_word(port: u16, word: &str) -> std::io::Result<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(word.as_bytes()).await?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).await?;
        Ok(reply)
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("no reply within 5 s")))
}

/// A ZooKeeper ensemble of N members on loopback (N = 1 is a standalone server).
#[derive(Debug)]
pub struct ZkEnsemble {
    members: Vec<ZkMember>,
    _dir: Workdir,
}

impl ZkEnsemble {
    /// Starts `n` members and waits until every one serves.
    pub async fn start(n: usize) -> Self {
        assert!(n >= 1, "an ensemble has at least one member");
        let dir = Workdir::new();
        let ports: Vec<MemberPorts> = (0..n)
            .map(|_| MemberPorts {
                client: free_port(),
                peer: free_port(),
                election: free_port(),
            })
            .collect();
        let mut members = Vec::with_capacity(n);
        for (i, own) in ports.iter().enumerate() {
            let id = i + 1;
            let data = dir.join(format!("zk{id}/data"));
            std::fs::create_dir_all(&data)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", data.display()));
            let mut config = format!(
                "tickTime={TICK_MS}\n\
                 initLimit=50\n\
                 syncLimit=10\n\
                 dataDir={data}\n\
                 clientPort={client}\n\
                 clientPortAddress=127.0.0.1\n\
                 minSessionTimeout=1000\n\
                 maxSessionTimeout=60000\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=srvr,ruok,cons,mntr,stat\n\
                 autopurge.purgeInterval=0\n",
                data = data.display(),
                client = own.client,
            );
            if n > 1 {
                std::fs::write(data.join("myid"), format!("{id}\n"))
                    .unwrap_or_else(|e| panic!("cannot write myid: {e}"));
                for (j, p) in ports.iter().enumerate() {
                    config.push_str(&format!(
                        "server.{}=127.0.0.1:{}:{}\n",
                        j + 1,
                        p.peer,
                        p.election
                    ));
                }
            }
            let config_path = dir.write(format!("zk{id}/zoo.cfg"), config);
            let mut member = ZkMember {
                id,
                ports: *own,
                config: config_path,
                log: dir.join(format!("zk{id}/zookeeper.log")),
                process: None,
            };
            member.spawn();
            members.push(member);
        }
        for m in &members {
            m.wait_serving().await;
        }
        Self { members, _dir: dir }
    }

    /// `host:port,host:port,...`: a connect string for clients.
    pub fn connect_string(&self) -> String {
        self.addresses().join(",")
    }

    /// Each member's `127.0.0.1:<client port>`, for configs' `hosts`/`zk_hosts` lists.
    pub fn addresses(&self) -> Vec<String> {
        self.members.iter().map(ZkMember::address).collect()
    }

    pub fn member(&mut self, i: usize) -> &mut ZkMember {
        &mut self.members[i]
    }

    pub fn members(&self) -> &[ZkMember] {
        &self.members
    }

    /// The index of the member that says it leads, if any.
    pub async fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.mode().await.as_deref() == Some("leader") {
                return Some(i);
            }
        }
        None
    }

    /// Member ids are 1-based in `myid`; this is the 0-based index's id.
    pub fn member_id(&self, i: usize) -> usize {
        self.members[i].id
    }
}

/// One standalone ZooKeeper server: a [`ZkEnsemble`] of one, with shortcuts.
#[derive(Debug)]
pub struct ZooKeeper {
    ensemble: ZkEnsemble,
}

impl ZooKeeper {
    /// Starts one on a free port and waits until it serves.
    pub async fn start() -> Self {
        Self {
            ensemble: ZkEnsemble::start(1).await,
        }
    }

    /// `127.0.0.1:<port>`.
    pub fn address(&self) -> String {
        self.ensemble.members[0].address()
    }

    pub fn port(&self) -> u16 {
        self.ensemble.members[0].client_port()
    }

    /// SIGKILL (the data dir stays).
    pub fn kill(&mut self) {
        self.ensemble.members[0].kill();
    }

    /// Starts it again with its data and waits until it serves.
    pub async fn restart(&mut self) {
        self.ensemble.members[0].restart();
        self.ensemble.members[0].wait_serving().await;
    }

    pub fn pause(&self) {
        self.ensemble.members[0].pause();
    }

    pub fn resume(&self) {
        self.ensemble.members[0].resume();
    }

    /// A client session for the test's own reads and writes.
    pub async fn client(&self) -> zookeeper_client::Client {
        zk_client(&self.address()).await
    }

    /// Runs `zkCli.sh -server <this> <args...>` (see [`zk_cli`]).
    pub async fn cli(&self, args: &[&str]) -> String {
        zk_cli(&self.address(), args).await
    }
}

/// Connects a client (session timeout 10 s) to `connect_string`, retrying for a while.
pub async fn zk_client(connect_string: &str) -> zookeeper_client::Client {
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + ZK_START_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        let connect = zookeeper_client::Client::connector()
            .with_session_timeout(Duration::from_secs(10))
            .with_connection_timeout(Duration::from_secs(5))
            .connect(connect_string);
        match tokio::time::timeout(Duration::from_secs(10), connect).await {
            Ok(Ok(client)) => return client,
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("cannot connect to ZooKeeper at {connect_string}: {last}");
}

/// Runs Debian's `zkCli.sh -server <server> <args...>` (one command, then it exits) and
/// returns its stdout followed by its stderr (it prints results such as `Created /x` on
/// stderr). Panics when it fails to run or exits non-zero. It takes about a second (a
/// JVM start) per call.
pub async fn zk_cli(server: &str, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new(ZK_CLI);
    cmd.arg("-server").arg(server).args(args).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("zkCli.sh {args:?} took over 60 s"))
        .unwrap_or_else(|e| panic!("cannot run {ZK_CLI} (scripts/install-deps): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "zkCli.sh {args:?} failed ({}): {text}",
        output.status
    );
    text
}
