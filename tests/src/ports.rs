//! Free loopback ports for the processes a test starts.
//!
//! The kernel hands out a free port when we bind port 0; we release it at once so etcd or
//! HAProxy can bind it. Between the release and their bind, another test in this process
//! could be handed the same number, so every port handed out is remembered for the life of
//! the process and never handed out twice. Another process (a parallel `cargo test`) can
//! still race us for it: the starters of etcd retry with fresh ports on "address in use".

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Mutex;

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before. Panics if none can be found (the machine is out of ports).
pub fn free_port() -> u16 {
    // A poisoned lock only means another test panicked while holding it; the set is
    // still a valid set of numbers.
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..1000 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|e| panic!("cannot bind 127.0.0.1:0 to find a free port: {e}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("cannot read the address of a bound socket: {e}"))
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
    panic!("no free port found in 1000 attempts")
}

/// `127.0.0.1:port`.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// Waits (up to `within`) until something accepts TCP connections on `127.0.0.1:port`:
/// how the starters of servers tell they are up. `what` names it in the timeout message.
pub async fn wait_listening(port: u16, within: std::time::Duration, what: &str) {
    crate::eventually::eventually(within, || async {
        tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .map(|_| ())
            .map_err(|e| format!("{what} on 127.0.0.1:{port}: {e}"))
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_never_handed_out_twice() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
        assert!(ports.iter().all(|&p| p != 0));
    }
}
