//! systemd readiness (`Type=notify`): tell the service manager `READY=1` the first time
//! the daemon's readiness flag (the one `/readyz` answers from) turns true, and
//! `STOPPING=1` when shutdown begins. Outside systemd (`NOTIFY_SOCKET` unset: a
//! terminal, a container, the tests) nothing is sent.
//!
//! The protocol is one datagram per state to the socket `NOTIFY_SOCKET` names (a path,
//! or an abstract name written `@name`), as sd_notify(3) describes; it is small enough
//! to speak here rather than through a crate that reads the environment itself.

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often the readiness flag is looked at. Readiness is a one-time event at start, so
/// a short poll costs nothing and needs no notification path through the daemons.
const POLL: Duration = Duration::from_millis(50);

/// Where systemd listens for this service's notifications.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifySocket {
    Path(PathBuf),
    /// An abstract socket (`@name` in `NOTIFY_SOCKET`), without the `@`.
    Abstract(Vec<u8>),
}

impl NotifySocket {
    /// From `NOTIFY_SOCKET`; `None` when unset or empty (not started by systemd).
    pub fn from_env() -> Option<Self> {
        let value = std::env::var_os("NOTIFY_SOCKET")?;
        Self::parse(value.as_encoded_bytes())
    }

    fn parse(value: &[u8]) -> Option<Self> {
        match value {
            [] => None,
            [b'@', name @ ..] => Some(Self::Abstract(name.to_vec())),
            path => Some(Self::Path(PathBuf::from(
                String::from_utf8_lossy(path).into_owned(),
            ))),
        }
    }

    fn send(&self, message: &str) -> std::io::Result<()> {
        let socket = UnixDatagram::unbound()?;
        match self {
            Self::Path(path) => socket.send_to(message.as_bytes(), path)?,
            Self::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
                socket.send_to_addr(message.as_bytes(), &addr)?
            }
        };
        Ok(())
    }
}

/// Spawns the task that notifies systemd, if it supervises this process
/// (`NOTIFY_SOCKET`): see [`spawn_notifier`]. Must be called inside a Tokio runtime.
pub fn notify_when_ready(ready: Arc<AtomicBool>, cancel: CancellationToken) {
    if let Some(socket) = NotifySocket::from_env() {
        spawn_notifier(socket, ready, cancel);
    }
}

/// Sends `READY=1` to `socket` once `ready` is first true, and `STOPPING=1` when
/// `cancel` fires; then the task ends. A failed send is logged, never fatal.
pub fn spawn_notifier(
    socket: NotifySocket,
    ready: Arc<AtomicBool>,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    if ready.load(Ordering::Relaxed) {
                        send(&socket, "READY=1");
                        break;
                    }
                }
            }
        }
        cancel.cancelled().await;
        send(&socket, "STOPPING=1");
    })
}

fn send(socket: &NotifySocket, message: &str) {
    if let Err(e) = socket.send(message) {
        tracing::warn!(error = %e, message, "cannot notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_values() {
        assert_eq!(NotifySocket::parse(b""), None);
        assert_eq!(
            NotifySocket::parse(b"/run/systemd/notify"),
            Some(NotifySocket::Path("/run/systemd/notify".into()))
        );
        assert_eq!(
            NotifySocket::parse(b"@/org/freedesktop/systemd1/notify/123"),
            Some(NotifySocket::Abstract(
                b"/org/freedesktop/systemd1/notify/123".to_vec()
            ))
        );
    }

    /// The messages systemd would get: none while not ready, `READY=1` once the flag is
    /// set, `STOPPING=1` on cancel.
    #[tokio::test]
    async fn ready_once_the_flag_is_set_then_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_nonblocking(true).unwrap();

        let ready = Arc::new(AtomicBool::new(false));
        let cancel = CancellationToken::new();
        let task = spawn_notifier(NotifySocket::Path(path), ready.clone(), cancel.clone());
        // Several polls go by while not ready: nothing is sent.
        tokio::time::sleep(POLL * 4).await;
        let mut buf = [0u8; 256];
        assert!(socket.recv(&mut buf).is_err(), "a message before ready");

        ready.store(true, Ordering::Relaxed);
        assert_eq!(next_message(&socket).await, "READY=1");
        cancel.cancel();
        assert_eq!(next_message(&socket).await, "STOPPING=1");
        task.await.unwrap();
    }

    /// An abstract socket, as systemd ≥ 254 names it.
    #[tokio::test]
    async fn abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("nerve-synapse-notify-test-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket.set_nonblocking(true).unwrap();
        let cancel = CancellationToken::new();
        let task = spawn_notifier(
            NotifySocket::Abstract(name.into_bytes()),
            Arc::new(AtomicBool::new(true)),
            cancel.clone(),
        );
        assert_eq!(next_message(&socket).await, "READY=1");
        cancel.cancel();
        task.await.unwrap();
    }

    async fn next_message(socket: &UnixDatagram) -> String {
        let mut buf = [0u8; 256];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(n) = socket.recv(&mut buf) {
                return String::from_utf8_lossy(&buf[..n]).trim().to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no message within 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
