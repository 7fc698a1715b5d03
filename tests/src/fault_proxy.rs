//! A TCP fault proxy between a daemon and etcd (reliability §2.1, modelled on etcd's
//! functional-test `etcd-proxy`): forwards `127.0.0.1:<port>` to a target, and can
//! [`delay`](FaultProxy::delay) every chunk, [`blackhole`](FaultProxy::blackhole) (keep
//! the sockets open, stop forwarding: a packet-dropping partition without RST),
//! [`reset`](FaultProxy::reset) (close every connection and refuse new ones) or
//! [`pass`](FaultProxy::pass) again.
//!
//! Blackhole applies to connections already open and to new ones (accepted, never
//! forwarded), so a client's reconnect hangs as it would behind a dropped route.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant as TokioInstant;

use crate::ports::loopback;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward as is.
    Pass,
    /// Forward, each chunk held this long first (each direction).
    Delay(Duration),
    /// Accept and hold connections, forward nothing.
    Blackhole,
    /// Close every connection; accept and close new ones at once.
    Reset,
    /// Close the connections an etcd member with this ID opened (its raft requests name
    /// it in `X-Server-From`) and refuse its new ones; forward the rest. Only a proxy
    /// started with [`FaultProxy::start_peer`] tells connections apart.
    CutFrom(u64),
}

/// A running fault proxy; stops (closing every connection) on drop.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Fault>,
    /// Bumped by `reset`, so connection tasks end.
    generation: watch::Sender<u64>,
    tasks: Arc<Mutex<JoinSet<()>>>,
    accept: tokio::task::JoinHandle<()>,
    /// When each connection was accepted.
    accepted: Arc<Mutex<Vec<Instant>>>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy")
            .field("addr", &self.addr)
            .field("fault", &self.fault())
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy to `target` on a free loopback port, in `Pass` mode.
    pub async fn start(target: SocketAddr) -> Self {
        Self::start_with(target, false).await
    }

    /// A proxy in front of an etcd member's peer port: it reads the first request of
    /// each connection for the member that sent it (`X-Server-From`), so that
    /// [`cut_from`](Self::cut_from) can part one member from the others.
    pub async fn start_peer(target: SocketAddr) -> Self {
        Self::start_with(target, true).await
    }

    async fn start_with(target: SocketAddr, sniff: bool) -> Self {
        let listener = TcpListener::bind(loopback(0))
            .await
            .expect("bind the fault proxy");
        let addr = listener.local_addr().expect("fault proxy address");
        let (mode, mode_rx) = watch::channel(Fault::Pass);
        let (generation, gen_rx) = watch::channel(0u64);
        let tasks: Arc<Mutex<JoinSet<()>>> = Arc::default();
        let conns = tasks.clone();
        let accepted: Arc<Mutex<Vec<Instant>>> = Arc::default();
        let log = accepted.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                log.lock().expect("accept log").push(Instant::now());
                if *mode_rx.borrow() == Fault::Reset {
                    drop(inbound);
                    continue;
                }
                let (mode, generation) = (mode_rx.clone(), gen_rx.clone());
                let mut set = conns.lock().expect("fault proxy tasks");
                // Reap finished connections so the set does not grow without bound.
                while set.try_join_next().is_some() {}
                set.spawn(connection(inbound, target, mode, generation, sniff));
            }
        });
        Self {
            addr,
            mode,
            generation,
            tasks,
            accept,
            accepted,
        }
    }

    /// When each client connection was accepted, in order (a client's connection
    /// attempts, also while the target is down).
    pub fn accepted(&self) -> Vec<Instant> {
        self.accepted.lock().expect("accept log").clone()
    }

    /// Cuts the connections of the etcd member `id` (see [`Fault::CutFrom`]).
    pub fn cut_from(&self, id: u64) {
        self.mode.send_replace(Fault::CutFrom(id));
    }

    /// Where clients connect (give this to the daemon as its etcd endpoint).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port`, as etcd endpoints are written in configs.
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.mode.borrow()
    }

    /// Forwards again (after any fault).
    pub fn pass(&self) {
        self.mode.send_replace(Fault::Pass);
    }

    /// Delays every chunk by `by`, each direction.
    pub fn delay(&self, by: Duration) {
        self.mode.send_replace(Fault::Delay(by));
    }

    /// Stops forwarding but keeps every socket open.
    pub fn blackhole(&self) {
        self.mode.send_replace(Fault::Blackhole);
    }

    /// Closes every connection and refuses (accepts and closes) new ones until `pass`.
    pub fn reset(&self) {
        self.mode.send_replace(Fault::Reset);
        self.generation.send_modify(|g| *g += 1);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        if let Ok(mut tasks) = self.tasks.lock() {
            tasks.abort_all();
        }
    }
}

async fn connection(
    mut inbound: TcpStream,
    target: SocketAddr,
    mode: watch::Receiver<Fault>,
    mut generation: watch::Receiver<u64>,
    sniff: bool,
) {
    generation.mark_unchanged();
    // The first bytes a client sends, read before connecting so they can name it.
    let mut first = Vec::new();
    if sniff {
        let mut buf = vec![0u8; 16 * 1024];
        match tokio::time::timeout(SNIFF_TIMEOUT, inbound.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(n)) => first.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let from = server_from(&first);
    let outbound = tokio::select! {
        _ = generation.changed() => return,
        out = connect_when_forwarding(target, mode.clone(), from) => match out {
            Some(out) => out,
            None => return,
        },
    };
    let (in_read, in_write) = inbound.into_split();
    let (out_read, mut out_write) = outbound.into_split();
    if out_write.write_all(&first).await.is_err() {
        return;
    }
    tokio::select! {
        _ = generation.changed() => {}
        _ = until_cut(mode.clone(), from) => {}
        _ = pump(in_read, out_write, mode.clone(), from) => {}
        _ = pump(out_read, in_write, mode, from) => {}
    }
}

/// How long a sniffing proxy waits for a client's first bytes.
const SNIFF_TIMEOUT: Duration = Duration::from_secs(2);

/// The member ID in an etcd peer request's `X-Server-From` header (hex).
fn server_from(request: &[u8]) -> Option<u64> {
    let text = String::from_utf8_lossy(request);
    let head = text.split("\r\n\r\n").next()?;
    head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("x-server-from")
            .then(|| u64::from_str_radix(value.trim(), 16).ok())?
    })
}

/// Whether the mode cuts a connection from `from`.
fn cuts(fault: Fault, from: Option<u64>) -> bool {
    matches!(fault, Fault::CutFrom(id) if from == Some(id))
}

/// Resolves once the mode cuts this connection.
async fn until_cut(mut mode: watch::Receiver<Fault>, from: Option<u64>) {
    loop {
        if cuts(*mode.borrow_and_update(), from) {
            return;
        }
        if mode.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Connects to the target once the mode forwards (a blackholed connect hangs).
async fn connect_when_forwarding(
    target: SocketAddr,
    mut mode: watch::Receiver<Fault>,
    from: Option<u64>,
) -> Option<TcpStream> {
    loop {
        let fault = *mode.borrow_and_update();
        match fault {
            f if cuts(f, from) => return None,
            Fault::Pass | Fault::Delay(_) | Fault::CutFrom(_) => break,
            Fault::Reset => return None,
            Fault::Blackhole => {}
        }
        mode.changed().await.ok()?;
    }
    TcpStream::connect(target).await.ok()
}

/// Copies `from` → `to` chunk by chunk, obeying the mode before each write. Reading
/// runs ahead of writing, so `Delay` is latency (each chunk leaves `d` after it
/// arrived), not a queue of `d` per chunk.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Fault>,
    sender: Option<u64>,
) {
    let (tx, mut rx) = mpsc::channel::<(TokioInstant, Vec<u8>)>(256);
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if tx
                .send((TokioInstant::now(), buf[..n].to_vec()))
                .await
                .is_err()
            {
                return;
            }
        }
    };
    let write = async move {
        while let Some((arrived, bytes)) = rx.recv().await {
            loop {
                let fault = *mode.borrow_and_update();
                match fault {
                    f if cuts(f, sender) => return,
                    Fault::Pass | Fault::CutFrom(_) => break,
                    Fault::Delay(d) => {
                        tokio::time::sleep_until(arrived + d).await;
                        break;
                    }
                    Fault::Reset => return,
                    // Held: the bytes are dropped if the fault ends in a reset, forwarded
                    // if it ends in pass (as a TCP retransmission would deliver them).
                    Fault::Blackhole => {}
                }
                if mode.changed().await.is_err() {
                    return;
                }
            }
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The writer drains what was read before an EOF; a failed writer ends the reader at
    // its next chunk (and the connection's other tasks end it anyway).
    tokio::join!(read, write);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_from_reads_the_raft_sender_header() {
        let request = b"GET /raftstream/message/8e9e05c52164694d HTTP/1.1\r\nHost: 127.0.0.1\r\nx-server-from: 91bc3c398fb3c146\r\nX-Etcd-Cluster-ID: cdf818194e3a8c32\r\n\r\n";
        assert_eq!(server_from(request), Some(0x91bc_3c39_8fb3_c146));
        assert_eq!(server_from(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), None);
        assert_eq!(server_from(b""), None);
        // A header in the body does not count.
        assert_eq!(
            server_from(b"POST /raft HTTP/1.1\r\n\r\nX-Server-From: 1\r\n"),
            None
        );
        assert!(cuts(Fault::CutFrom(7), Some(7)));
        assert!(!cuts(Fault::CutFrom(7), Some(8)));
        assert!(!cuts(Fault::CutFrom(7), None));
        assert!(!cuts(Fault::Pass, Some(7)));
    }
}
