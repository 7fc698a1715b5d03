//! The periodic check's slices, read beside the loop (issue 19): a change that lands
//! while a slice is being read is applied at once, and the slice's read, older than the
//! change, neither undoes nor repeats it. synapse reaches HAProxy's stats socket through
//! a proxy here that can hold the answer to one slice's `show servers state` until the
//! test lets it go: the read is taken before the change and planned after it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use integration_tests::{eventually, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::world::{generation, routes_to, three_backends, World};
use crate::TIMEOUT;

/// A stats socket in front of HAProxy's. Once armed, the next connection that asks
/// `show servers state web` gets no answer back until the next [`HoldingSocket::release`]
/// (HAProxy answers at once: the answer held is as of the request). While nothing
/// changes, only the periodic check's slices ask that: a full pass, in the loop, asks
/// `show servers state` of every backend.
struct HoldingSocket {
    path: PathBuf,
    armed: Arc<AtomicBool>,
    held: Arc<Notify>,
    release: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl HoldingSocket {
    fn start(path: PathBuf, upstream: PathBuf) -> Self {
        let listener = UnixListener::bind(&path).expect("bind the holding socket");
        let (armed, held) = (Arc::new(AtomicBool::new(false)), Arc::new(Notify::new()));
        let (release, released) = watch::channel(0);
        let (a, h) = (armed.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = UnixStream::connect(&upstream).await else {
                    continue;
                };
                tokio::spawn(relay(
                    client,
                    server,
                    a.clone(),
                    h.clone(),
                    released.clone(),
                ));
            }
        });
        Self {
            path,
            armed,
            held,
            release,
            task,
        }
    }

    /// Holds the answer to the next slice read; resolves once it is.
    async fn hold_next_read(&self) {
        let held = self.held.notified();
        self.armed.store(true, Ordering::SeqCst);
        tokio::time::timeout(TIMEOUT, held)
            .await
            .expect("no check slice read within the timeout");
    }

    fn release(&self) {
        self.release.send_modify(|n| *n += 1);
    }
}

impl Drop for HoldingSocket {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies one connection both ways; a connection that asks `show servers state web`
/// while the proxy is armed gets its answers once released.
async fn relay(
    client: UnixStream,
    server: UnixStream,
    armed: Arc<AtomicBool>,
    held: Arc<Notify>,
    mut released: watch::Receiver<u64>,
) {
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    // Held until the release count passes this (`u64::MAX`: not held).
    let holding = Arc::new(AtomicU64::new(u64::MAX));
    let (hold, releases) = (holding.clone(), released.clone());
    let requests = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match client_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let asks_state =
                String::from_utf8_lossy(&buf[..n]).contains("show servers state web\n");
            if asks_state
                && armed
                    .compare_exchange(true, false, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                hold.store(*releases.borrow(), Ordering::SeqCst);
                held.notify_one();
            }
            if server_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = server_tx.shutdown().await;
    };
    let answers = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_rx.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let until = holding.load(Ordering::SeqCst);
            if until != u64::MAX {
                let _ = released.wait_for(|r| *r > until).await;
            }
            if client_tx.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_tx.shutdown().await;
    };
    tokio::join!(requests, answers);
}

fn socket_key(path: &Path) -> String {
    format!(r#""socket_file_path": "{}""#, path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_during_a_check_slice_read_is_neither_undone_nor_repeated() {
    let w = World::start("slice-read").await;
    let port = free_port();
    let (a, b, c) = three_backends().await;
    w.register("host-a", &a).await;
    w.register("host-b", &b).await;
    let holding = HoldingSocket::start(w.path("holding.sock"), w.path("stats.sock"));
    let (synapse, haproxy) = w
        .with_haproxy(port, |text| {
            text.replace(
                &socket_key(&w.path("stats.sock")),
                &socket_key(&holding.path),
            )
        })
        .await;
    routes_to(port, &["a", "b"]).await;
    // Settled: the file written, so that only the periodic check reads the servers'
    // state from here on.
    eventually(TIMEOUT, || async { w.server_lines().len() == 2 }).await;
    let before = generation(haproxy.master()).await;
    let (reloads, failures) = (
        synapse.get(|c| &c.reloads),
        synapse.get(|c| &c.runtime_failures),
    );

    // Twice: a server added, then one removed, each while a slice read is held.
    let c_server = format!("host-c_127.0.0.1:{}", c.port());
    let b_server = format!("host-b_127.0.0.1:{}", b.port());
    for (change, want) in [
        ("add c", ["a", "b", "c"].as_slice()),
        ("remove b", &["a", "c"]),
    ] {
        holding.hold_next_read().await;
        match change {
            "add c" => w.register("host-c", &c).await,
            _ => w.deregister("host-b").await,
        }
        // The change is applied while the slice's answer is held.
        let servers = |present: &str, gone: &str| {
            let (present, gone) = (present.to_owned(), gone.to_owned());
            let haproxy = &haproxy;
            async move {
                let state = haproxy
                    .show_servers_state("web")
                    .await
                    .map_err(|e| e.to_string())?;
                let names: Vec<&str> = state.iter().map(|s| s.name.as_str()).collect();
                let ready = state
                    .iter()
                    .any(|s| s.name == present && !s.admin_state.is_maint());
                if ready && !names.contains(&gone.as_str()) {
                    Ok(())
                } else {
                    Err(format!("{change}: HAProxy runs {names:?}"))
                }
            }
        };
        match change {
            "add c" => eventually(TIMEOUT, || servers(&c_server, "none")).await,
            _ => eventually(TIMEOUT, || servers(&c_server, &b_server)).await,
        }
        routes_to(port, want).await;
        // The file follows in a later apply: the change's commands are all counted.
        eventually(TIMEOUT, || async {
            let lines = w.server_lines();
            let has = |s: &str| lines.iter().any(|l| l.contains(s));
            has(&c_server) && has(&b_server) == (change == "add c")
        })
        .await;
        let commands = synapse.get(|c| &c.runtime_commands);
        holding.release();
        // The slice is planned before the next one is read (one at a time): once the
        // next is asked, the held one has been planned.
        holding.hold_next_read().await;
        holding.release();
        assert_eq!(
            synapse.get(|c| &c.runtime_commands),
            commands,
            "{change}: the slice read before it sent commands"
        );
        assert_eq!(synapse.get(|c| &c.runtime_failures), failures, "{change}");
        routes_to(port, want).await;
    }
    assert_eq!(synapse.get(|c| &c.reloads), reloads);
    assert_eq!(
        generation(haproxy.master()).await,
        before,
        "HAProxy reloaded"
    );
    synapse.stop().await;
}
