//! ZooKeeper connection settings shared by nerve's ZooKeeper reporter and synapse's
//! ZooKeeper watcher: the SmartStack registry that fleets migrate from.
//!
//! A session is the unit of liveness in ZooKeeper (as a lease is in etcd): nerve's
//! ephemeral nodes live exactly as long as its session. The client crate
//! (`zookeeper-client`) reconnects within a session by itself, moving between the
//! configured hosts; once the session has expired it is dead for good, and the owner
//! must connect a new one and rebuild what it had (nerve: its nodes; synapse: its
//! watches).

use std::time::Duration;

/// ZooKeeper's client port, used when a host is written without one.
pub const DEFAULT_ZK_PORT: u16 = 2181;

/// Where to connect and how long a session outlives a lost connection.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZkSettings {
    /// `host:port` of each member, sorted (upstream pools one session per sorted list).
    pub hosts: Vec<String>,
    /// The session timeout asked for; the server clamps it to its own
    /// `minSessionTimeout`..`maxSessionTimeout` (by default 2–20 ticks: 4–40 s).
    pub session_timeout: Duration,
}

/// Why a `zk_hosts`/`hosts` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZkHostError {
    #[error("is empty")]
    Empty,
    #[error("must be `host` or `host:port` (a chroot suffix `/path` is not supported here)")]
    Shape,
    #[error("has a port that is not a number from 1 to 65535")]
    Port,
}

impl ZkSettings {
    /// Validates a list of members (`host` or `host:port`, as upstream writes them).
    pub fn new(hosts: &[String], session_timeout: Duration) -> Result<Self, (usize, ZkHostError)> {
        let mut out = Vec::with_capacity(hosts.len());
        for (i, h) in hosts.iter().enumerate() {
            out.push(normalize_host(h).map_err(|e| (i, e))?);
        }
        out.sort();
        out.dedup();
        Ok(Self {
            hosts: out,
            session_timeout,
        })
    }

    /// The client's connect string: `h1:p1,h2:p2`.
    pub fn connect_string(&self) -> String {
        self.hosts.join(",")
    }

    /// Connects a new session. Gives up after about one session timeout when no member
    /// answers (the caller retries with backoff).
    pub async fn connect(&self) -> Result<zookeeper_client::Client, zookeeper_client::Error> {
        zookeeper_client::Client::connector()
            .with_session_timeout(self.session_timeout)
            .with_connection_timeout(self.connection_timeout())
            .connect(&self.connect_string())
            .await
    }

    /// How long one connection attempt to one member may take: a third of the session,
    /// so that a dead member leaves time to try the others before the session expires.
    pub fn connection_timeout(&self) -> Duration {
        (self.session_timeout / 3).clamp(Duration::from_millis(300), Duration::from_secs(5))
    }
}

fn normalize_host(h: &str) -> Result<String, ZkHostError> {
    let h = h.trim();
    if h.is_empty() {
        return Err(ZkHostError::Empty);
    }
    if h.contains('/') || h.contains(',') || h.contains(char::is_whitespace) {
        return Err(ZkHostError::Shape);
    }
    // `[v6]:port`, `v4:port`, `name:port`, or a bare host.
    let (host, port) = if let Some(rest) = h.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or(ZkHostError::Shape)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(ZkHostError::Shape),
        };
        (format!("[{addr}]"), port)
    } else {
        match h.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => return Err(ZkHostError::Shape),
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (h.to_owned(), None),
        }
    };
    if host.is_empty() || host == "[]" {
        return Err(ZkHostError::Shape);
    }
    let port = match port {
        None => DEFAULT_ZK_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or(ZkHostError::Port)?,
    };
    Ok(format!("{host}:{port}"))
}

/// `zookeeper_client::SessionState` as one word, for status and metrics.
pub fn state_name(state: zookeeper_client::SessionState) -> &'static str {
    use zookeeper_client::SessionState as S;
    match state {
        S::SyncConnected => "connected",
        S::ConnectedReadOnly => "connected_read_only",
        S::Disconnected => "disconnected",
        S::Expired => "expired",
        S::AuthFailed => "auth_failed",
        S::Closed => "closed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(hosts: &[&str]) -> Result<ZkSettings, (usize, ZkHostError)> {
        let hosts: Vec<String> = hosts.iter().map(|h| (*h).to_owned()).collect();
        ZkSettings::new(&hosts, Duration::from_secs(10))
    }

    #[test]
    fn hosts_get_the_default_port_and_are_sorted_like_upstreams_pool_key() {
        let s = settings(&["zk2:2182", "zk1", "[::1]:2181", "127.0.0.1:2181", "zk1"]).unwrap();
        assert_eq!(
            s.hosts,
            ["127.0.0.1:2181", "[::1]:2181", "zk1:2181", "zk2:2182"]
        );
        assert_eq!(
            s.connect_string(),
            "127.0.0.1:2181,[::1]:2181,zk1:2181,zk2:2182"
        );
    }

    #[test]
    fn bad_hosts_are_refused_with_their_index() {
        assert_eq!(settings(&["zk1", ""]).unwrap_err(), (1, ZkHostError::Empty));
        assert_eq!(settings(&["zk1:0"]).unwrap_err(), (0, ZkHostError::Port));
        assert_eq!(settings(&["zk1:x"]).unwrap_err(), (0, ZkHostError::Port));
        assert_eq!(
            settings(&["zk1:2181/chroot"]).unwrap_err(),
            (0, ZkHostError::Shape)
        );
        assert_eq!(settings(&["a,b"]).unwrap_err(), (0, ZkHostError::Shape));
        assert_eq!(settings(&["::1"]).unwrap_err(), (0, ZkHostError::Shape));
    }
}
