//! Free loopback ports for the processes a test starts.
//!
//! Ports come from outside the kernel's ephemeral range (`ip_local_port_range`, usually
//! 32768–60999): the kernel never gives those to outgoing connections, so a port a
//! stopped etcd member or HAProxy must bind again on restart cannot be taken meanwhile by
//! one of the thousands of client connections a busy run opens (that happened: a member
//! down for 30 s could not rebind its peer port). A port is checked free by binding it and
//! released at once so etcd or HAProxy can bind it. Between the release and their bind,
//! another test in this process could pick the same number, so every port handed out is
//! remembered for the life of the process and never handed out twice. Another process (a
//! parallel `cargo test`) can still race us for it: the starters of etcd retry with fresh
//! ports on "address in use".

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Where the next search starts, as an offset into [`range`]; spread by process id so
/// two test processes rarely walk the same numbers.
static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);

/// The ports to pick from: below the kernel's ephemeral range, or above it when there
/// is little room below; `None` when neither has room (then the kernel picks, port 0).
fn range() -> Option<(u16, u16)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let mut bounds = text
        .as_deref()
        .unwrap_or("32768 60999")
        .split_whitespace()
        .map(|v| v.parse::<u16>().ok());
    let (lo, hi) = (bounds.next().flatten()?, bounds.next().flatten()?);
    if lo >= 12_000 {
        Some((10_000, lo - 1))
    } else if hi <= 63_000 {
        Some((hi + 1, 65_535))
    } else {
        None
    }
}

/// A TCP port on 127.0.0.1 that was free a moment ago and that this process has not
/// handed out before. Panics if none can be found (the machine is out of ports).
pub fn free_port() -> u16 {
    // A poisoned lock only means another test panicked while holding it; the set is
    // still a valid set of numbers.
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((lo, hi)) = range() {
        let span = u32::from(hi - lo) + 1;
        let _ = CURSOR.compare_exchange(
            u32::MAX,
            std::process::id().wrapping_mul(7_919) % span,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        for _ in 0..span {
            let offset = CURSOR.fetch_add(1, Ordering::Relaxed) % span;
            let port = lo + u16::try_from(offset).unwrap_or(0);
            if !handed_out.contains(&port) && TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
            {
                handed_out.insert(port);
                return port;
            }
        }
    }
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

    #[test]
    fn ports_are_outside_the_ephemeral_range() {
        let Some((lo, hi)) = range() else { return };
        for _ in 0..50 {
            let p = free_port();
            assert!((lo..=hi).contains(&p), "{p} not in {lo}..={hi}");
        }
    }
}
