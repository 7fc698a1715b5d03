//! Defaults, named as in docs/configuration-synapse.md.

use std::time::Duration;

pub const DEBOUNCE: Duration = Duration::from_millis(100);
pub const DEBOUNCE_MAX_WAIT: Duration = Duration::from_secs(1);
pub const RESYNC_INTERVAL: Duration = Duration::from_secs(60);
pub const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// Keys below one service's path (valid or not) synapse will hold.
pub const MAX_KEYS: u64 = 50_000;
/// The ZooKeeper session synapse asks for (upstream's is about 36 s). Only its
/// watches depend on it; its expiry costs a full re-read, never routing.
pub const ZK_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes (keys + values) one list of a service's path may bring.
pub const MAX_BYTES: u64 = 64 * 1024 * 1024;
pub const EC2_CHECK_INTERVAL: Duration = Duration::from_secs(15);
/// upstream's `dns` default.
pub const DNS_CHECK_INTERVAL: Duration = Duration::from_secs(30);
/// The port of a `nameserver` given without one.
pub const DNS_PORT: u16 = 53;
/// One EC2 API request.
pub const EC2_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
pub const RESTART_INTERVAL: Duration = Duration::from_secs(2);
pub const STATE_FILE_TTL: Duration = Duration::from_secs(86_400);
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// haproxy.cfg: owner read-write, group read (`stats auth`, userlists).
pub const CONFIG_FILE_MODE: u32 = 0o640;
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
pub const SERVER_SLOTS: u32 = 10;
pub const HAPROXY_BINARY: &str = "haproxy";
/// The managed master CLI, beside haproxy.cfg.
pub const MASTER_SOCKET_NAME: &str = "haproxy-master.sock";
pub const BIND_ADDRESS: &str = "localhost";
pub const MAX_SERVER_ID: u32 = 65_535;
pub const SERVICE_PATH_PREFIX: &str = "/nerve/services";
