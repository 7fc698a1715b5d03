//! The admin endpoint's unit tests: routes, limits, the listen setting and the client,
//! over real loopback sockets.

use super::*;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;

#[test]
fn listen_setting_reads_every_spelling() {
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        admin_listen: ListenSetting,
    }
    let read = |text: &str| serde_json::from_str::<File>(text).map(|f| f.admin_listen);
    let d = NERVE_DEFAULT_LISTEN;
    assert_eq!(read("{}").unwrap().resolve(d), Ok(Some(d)));
    assert_eq!(
        read(r#"{"admin_listen": true}"#).unwrap().resolve(d),
        Ok(Some(d))
    );
    assert_eq!(
        read(r#"{"admin_listen": null}"#).unwrap().resolve(d),
        Ok(None)
    );
    assert_eq!(
        read(r#"{"admin_listen": false}"#).unwrap().resolve(d),
        Ok(None)
    );
    assert_eq!(
        read(r#"{"admin_listen": "0.0.0.0:9"}"#).unwrap().resolve(d),
        Ok(Some("0.0.0.0:9".parse().unwrap()))
    );
    let e = read(r#"{"admin_listen": "nine"}"#)
        .unwrap()
        .resolve(d)
        .unwrap_err();
    assert!(e.contains("127.0.0.1:9101") && e.contains("null"), "{e}");
    let e = read(r#"{"admin_listen": 9101}"#).err().unwrap().to_string();
    assert!(e.contains("address:port"), "{e}");
}

#[tokio::test]
async fn a_taken_address_leaves_the_endpoint_off() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let state = AdminState::new(Registry::default(), Arc::new(|| serde_json::json!({})));
    assert!(serve_or_warn(addr, state, CancellationToken::new())
        .await
        .is_none());
}

#[tokio::test]
async fn serves_metrics_status_and_probes() {
    let mut registry = Registry::default();
    let counter: Counter = Counter::default();
    registry.register("test_events", "Events seen", counter.clone());
    counter.inc_by(3);
    let state = AdminState::new(registry, Arc::new(|| serde_json::json!({"services": 2})));
    let cancel = CancellationToken::new();
    let (addr, task) = serve(
        "127.0.0.1:0".parse().unwrap(),
        state.clone(),
        cancel.clone(),
    )
    .await
    .unwrap();

    let (code, body) = fetch(addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("test_events_total 3"), "{body}");
    let (code, body) = fetch(addr, "/status").await.unwrap();
    assert_eq!(code, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["services"],
        2
    );
    assert_eq!(fetch(addr, "/healthz").await.unwrap().0, 200);
    assert_eq!(fetch(addr, "/readyz").await.unwrap().0, 503);
    state.ready.store(true, Ordering::Relaxed);
    assert_eq!(fetch(addr, "/readyz").await.unwrap().0, 200);
    assert_eq!(fetch(addr, "/nope").await.unwrap().0, 404);

    cancel.cancel();
    task.await.unwrap();
    // Stopped: `status` says unreachable.
    assert!(matches!(
        status_at(addr, "/status").await,
        Err(StatusError::Unreachable { .. })
    ));
}

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn plain_state() -> AdminState {
    AdminState::new(Registry::default(), Arc::new(|| serde_json::json!({})))
}

async fn serve_limited(state: AdminState, limits: Limits) -> (SocketAddr, CancellationToken) {
    let cancel = CancellationToken::new();
    let (addr, _task) = serve_with(
        "127.0.0.1:0".parse().unwrap(),
        state,
        limits,
        cancel.clone(),
    )
    .await
    .unwrap();
    (addr, cancel)
}

/// Everything the server sends until it closes, or `None` if it is still open at
/// `deadline`.
async fn read_until_closed(stream: &mut TcpStream, deadline: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = tokio::time::timeout(deadline, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    read.ok().map(|()| got)
}

/// A client sending its request one byte at a time is cut off at the exchange
/// deadline, before it could finish (the old parser's 5 s read timeout, too, was
/// the only bound; hyper alone has none without a timer).
#[tokio::test]
async fn a_slow_loris_client_is_cut_off_at_the_exchange_deadline() {
    let limits = Limits {
        connections: 4,
        exchange: Duration::from_secs(1),
    };
    let (addr, cancel) = serve_limited(plain_state(), limits).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(60)
    );
    // 100 ms a byte: about 9 s for the whole request, far past the 1 s deadline.
    let mut cut_after = None;
    for (i, byte) in request.bytes().enumerate() {
        if stream.write_all(&[byte]).await.is_err() {
            cut_after = Some(i);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut probe = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
        {
            cut_after = Some(i + 1);
            break;
        }
    }
    let sent = cut_after.expect("the slow request was never cut off");
    assert!(sent < request.len(), "cut off only after the whole request");
    cancel.cancel();
}

/// With `limit` connections held open (sending nothing), one more is refused at
/// once (503, closed), and the endpoint serves again once one is released.
#[tokio::test]
async fn connections_over_the_limit_are_refused_at_once() {
    let limits = Limits {
        connections: 3,
        exchange: Duration::from_secs(60),
    };
    let (addr, cancel) = serve_limited(plain_state(), limits).await;
    let mut held = Vec::new();
    for _ in 0..limits.connections {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    // Each held connection is accepted (and takes its permit) in order; a request on
    // a fresh connection is refused once all are taken.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut extra, Duration::from_secs(10))
        .await
        .expect("the connection over the limit was left open");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
        "{answer}"
    );
    assert!(!answer.contains("200"), "{answer}");

    drop(held.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok((200, _)) = fetch(addr, "/healthz").await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not served after a held connection closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
}

/// A client that asks for a big document and never reads it holds its connection
/// only until the exchange deadline: the write side is bounded too.
#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_and_its_slot_freed() {
    let big = serde_json::json!({"blob": "x".repeat(32 * 1024 * 1024)});
    let state = AdminState::new(Registry::default(), Arc::new(move || big.clone()));
    let limits = Limits {
        connections: 1,
        exchange: Duration::from_secs(2),
    };
    let (addr, cancel) = serve_limited(state, limits).await;
    let mut stuck = TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"GET /status HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // Its answer is far larger than the socket buffers: the server's write blocks
    // with the only slot taken, until the deadline closes the stuck exchange.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok((200, _)) = fetch(addr, "/healthz").await {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck writer kept its slot"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The stuck client got a cut answer: closed before the whole document.
    let got = read_until_closed(&mut stuck, Duration::from_secs(10))
        .await
        .expect("the stuck connection is still open");
    assert!(got.len() < 32 * 1024 * 1024, "the whole answer was sent");
    cancel.cancel();
}

#[test]
fn a_non_loopback_address_is_warned_about() {
    for quiet in ["127.0.0.1:9101", "127.0.0.2:1", "[::1]:9102"] {
        assert_eq!(exposure_warning(quiet.parse().unwrap()), None, "{quiet}");
    }
    for exposed in ["0.0.0.0:9101", "[::]:9102", "10.1.2.3:9101", "192.0.2.1:80"] {
        let warning = exposure_warning(exposed.parse().unwrap()).expect(exposed);
        assert!(
            warning.contains(exposed) && warning.contains("not a loopback"),
            "{warning}"
        );
    }
    // And it is logged, as a warning, by what serve() calls after binding.
    let buf = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let sink = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || LogSink(sink.clone()))
        .with_ansi(false)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        warn_if_exposed("127.0.0.1:9101".parse().unwrap());
        warn_if_exposed("0.0.0.0:9101".parse().unwrap());
    });
    let text = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    assert_eq!(text.lines().count(), 1, "{text}");
    assert!(
        text.contains("WARN") && text.contains("0.0.0.0:9101"),
        "{text}"
    );
}

struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);
impl std::io::Write for LogSink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A daemon's own routes see every request first (method, path, query, body) and
/// may leave it to the built-in ones; a method no route takes is still 405.
#[tokio::test]
async fn daemon_routes_come_first_and_fall_through() {
    let mut state = plain_state();
    state.routes = Some(Arc::new(|request: AdminRequest| {
        Box::pin(async move {
            let service = request.path.strip_prefix("/drain/")?.to_owned();
            (request.method == "POST").then(|| {
                AdminResponse::json(
                    202,
                    &serde_json::json!({
                        "service": service,
                        "query": request.query,
                        "body": String::from_utf8_lossy(&request.body),
                    }),
                )
            })
        })
    }));
    let (addr, cancel) = serve_limited(state, Limits::DEFAULT).await;
    let post = |path: &'static str, body: Vec<u8>| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let _ = stream.write_all(&body).await;
        let got = read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .unwrap();
        String::from_utf8_lossy(&got).into_owned()
    };
    let answer = post("/drain/web?wait=1", b"{}".to_vec()).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert!(
        answer.contains(r#""service": "web""#)
            && answer.contains(r#""query": "wait=1""#)
            && answer.contains(r#""body": "{}""#),
        "{answer}"
    );
    let answer = post("/status", Vec::new()).await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let answer = post("/drain/web", vec![b'x'; MAX_REQUEST_BODY + 1]).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // GETs not taken by a route are the built-in ones.
    assert_eq!(fetch(addr, "/healthz").await.unwrap(), (200, "ok\n".into()));
    assert_eq!(fetch(addr, "/drain/web").await.unwrap().0, 404);
    cancel.cancel();
}

/// A POST from a web page (`Origin`, or `Sec-Fetch-Site` other than `none`) is refused
/// before any route sees it: a page on any site could otherwise drain this host's
/// services through 127.0.0.1. The same POST from curl or the CLI goes through, and so
/// do GETs with those headers.
#[tokio::test]
async fn a_post_from_a_web_page_is_refused_before_any_route() {
    let taken = Arc::new(AtomicU64::new(0));
    let mut state = plain_state();
    let seen = taken.clone();
    state.routes = Some(Arc::new(move |request: AdminRequest| {
        let seen = seen.clone();
        Box::pin(async move {
            (request.method == "POST").then(|| {
                seen.fetch_add(1, Ordering::SeqCst);
                AdminResponse::text(200, "drained\n")
            })
        })
    }));
    let (addr, cancel) = serve_limited(state, Limits::DEFAULT).await;
    let send = |method: &'static str, headers: &'static str| async move {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "{method} /drain/web HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}Content-Length: 0\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let got = read_until_closed(&mut stream, Duration::from_secs(10))
            .await
            .unwrap();
        String::from_utf8_lossy(&got).into_owned()
    };
    for headers in [
        "Origin: https://evil.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: no-cors\r\n",
        "Sec-Fetch-Site: same-origin\r\n",
    ] {
        let answer = send("POST", headers).await;
        assert!(answer.starts_with("HTTP/1.1 403"), "{headers}: {answer}");
        assert!(answer.contains("web page"), "{answer}");
    }
    assert_eq!(
        taken.load(Ordering::SeqCst),
        0,
        "a route saw a refused request"
    );
    // curl, the CLI, or a user typing the address (Sec-Fetch-Site: none).
    for headers in [
        "",
        "User-Agent: curl/7.88.1\r\n",
        "Sec-Fetch-Site: none\r\n",
    ] {
        let answer = send("POST", headers).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{headers:?}: {answer}");
    }
    assert_eq!(taken.load(Ordering::SeqCst), 3);
    // Reading is not refused: a GET with Origin is answered as before.
    let answer = send("GET", "Origin: https://evil.example\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    cancel.cancel();
}

/// A request head over the limit is refused by hyper, never buffered without end.
#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let (addr, cancel) = serve_limited(plain_state(), Limits::DEFAULT).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(MAX_REQUEST_HEAD * 2)
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let got = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .expect("left open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got}");
    cancel.cancel();
}

/// HEAD: the headers of GET, no body.
#[tokio::test]
async fn head_answers_without_a_body() {
    let (addr, cancel) = serve_limited(plain_state(), Limits::DEFAULT).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let got = read_until_closed(&mut stream, Duration::from_secs(10))
        .await
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(
        got.to_ascii_lowercase().contains("content-length: 3"),
        "{got}"
    );
    assert!(got.ends_with("\r\n\r\n"), "{got}");
    cancel.cancel();
}

#[test]
fn status_address_prefers_the_flag_then_the_config_then_the_default() {
    let dir = std::env::temp_dir().join(format!("admin-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let flag: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let file = dir.join("c.json");
    std::fs::write(
        &file,
        "{\n // comment\n \"admin_listen\": \"0.0.0.0:9102\", \"x\": 1,}",
    )
    .unwrap();
    let default = SYNAPSE_DEFAULT_LISTEN;
    assert_eq!(
        status_address(Some(flag), Some(&file), default).unwrap(),
        flag
    );
    assert_eq!(
        status_address(None, Some(&file), default).unwrap(),
        "127.0.0.1:9102".parse::<SocketAddr>().unwrap()
    );
    std::fs::write(&file, r#"{"admin_listen": "[::]:9102"}"#).unwrap();
    assert_eq!(
        status_address(None, Some(&file), default).unwrap(),
        "[::1]:9102".parse::<SocketAddr>().unwrap()
    );
    // No key, or `true`: the daemon's default.
    for text in [r#"{"services": {}}"#, r#"{"admin_listen": true}"#] {
        std::fs::write(&file, text).unwrap();
        assert_eq!(status_address(None, Some(&file), default).unwrap(), default);
    }
    for text in [r#"{"admin_listen": null}"#, r#"{"admin_listen": false}"#] {
        std::fs::write(&file, text).unwrap();
        let err = status_address(None, Some(&file), default).unwrap_err();
        assert!(matches!(err, StatusError::Off { .. }), "{err}");
        assert!(err.to_string().contains("--admin"), "{err}");
    }
    for text in [
        r#"{"admin_listen": "localhost"}"#,
        r#"{"admin_listen": 9102}"#,
    ] {
        std::fs::write(&file, text).unwrap();
        let err = status_address(None, Some(&file), default).unwrap_err();
        assert!(err.to_string().contains("admin_listen"), "{err}");
    }
    assert!(matches!(
        status_address(None, Some(&dir.join("missing.json")), default),
        Err(StatusError::Config { .. })
    ));
    assert_eq!(status_address(None, None, default).unwrap(), default);
    std::fs::remove_dir_all(&dir).unwrap();
}
