//! synapse's `ec2tag` discovery against a real moto server on loopback (its VPC is
//! `127.0.0.0/16`, so instances get loopback addresses), with real HAProxy, real HTTP
//! backends listening on the instances' addresses, and real requests through HAProxy.
//!
//! Local helper: [`FaultProxy`], an HTTP proxy in front of moto that injects the EC2
//! failures of the issue (5xx, throttling, timeouts, malformed XML, a page failing in the
//! middle of a listing, expired credentials).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Host, InstanceId, Port, Registration, ServicePath};
use integration_tests::{
    eventually, free_port, http_get, loopback, Backend, Ec2Instance, Etcd,
    InProcessSynapse as Synapse, Moto, World, ROUTE_TIMEOUT as TIMEOUT,
};
use synapse::counters::Counters;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn ec2_discovery(endpoint: &str) -> String {
    format!(
        r#"{{"method": "ec2tag", "tag_name": "servicename", "tag_value": "true",
            "aws_region": "us-east-1", "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing", "endpoint": "{endpoint}",
            "check_interval": 0.3, "request_timeout": 1}}"#
    )
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("instance ip"), port)
}

/// One backend per instance, on its address and `port`, named `i0`, `i1`, … in order.
async fn backends_on<'a>(
    instances: impl IntoIterator<Item = &'a Ec2Instance>,
    port: u16,
) -> Vec<Backend> {
    let mut backends = Vec::new();
    for (i, inst) in instances.into_iter().enumerate() {
        backends.push(
            Backend::start_at(format!("i{i}"), addr(&inst.private_ip, port))
                .await
                .expect("backend on the instance's address"),
        );
    }
    backends
}

/// synapse discovering `web` from the EC2 API at `endpoint` (instances on `port`), and
/// HAProxy started on its output.
async fn start_routing(world: &mut World, endpoint: &str, port: u16) -> Synapse {
    let config = world.config(
        &ec2_discovery(endpoint),
        &format!(r#", "backend_port_override": {port}"#),
    );
    let synapse = Synapse::start(&config);
    world.start_haproxy().await;
    synapse
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_running_instances_are_routed_and_stopped_or_untagged_ones_removed() {
    let moto = Moto::start().await;
    let mut world = World::new();
    let port = free_port();
    let tagged = moto.run_instances(3, &[("servicename", "true")]).await;
    let other = moto.run_instances(1, &[("servicename", "other")]).await;
    let _backends = backends_on(tagged.iter().chain(&other), port).await;
    let _synapse = start_routing(&mut world, &moto.endpoint(), port).await;
    world.wait_answering(&["i0", "i1", "i2"]).await;
    // The untagged-for-us instance never shows up.
    assert!(!world.haproxy_cfg().contains(&other[0].private_ip));

    moto.stop_instances(&[&tagged[0].id]).await;
    world.wait_answering(&["i1", "i2"]).await;
    moto.untag(&[&tagged[1].id], "servicename").await;
    world.wait_answering(&["i2"]).await;
    let cfg = world.haproxy_cfg();
    assert!(
        !cfg.contains(&format!("{}:{port}", tagged[0].private_ip)),
        "{cfg}"
    );
    assert!(
        !cfg.contains(&format!("{}:{port}", tagged[1].private_ip)),
        "{cfg}"
    );
}

/// The seed's config: ec2tag + `server_port_override` + `server_backup_port` +
/// `server_options: "check"`. Backups take over when every normal server is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_backup_port_servers_serve_when_every_normal_server_is_down() {
    let moto = Moto::start().await;
    let mut world = World::new();
    let (normal, backup) = (free_port(), free_port());
    let instances = moto.run_instances(2, &[("servicename", "true")]).await;
    let mut normals = Vec::new();
    let mut backups = Vec::new();
    for (i, inst) in instances.iter().enumerate() {
        normals.push(
            Backend::start_at(format!("n{i}"), addr(&inst.private_ip, normal))
                .await
                .expect("normal"),
        );
        backups.push(
            Backend::start_at(format!("b{i}"), addr(&inst.private_ip, backup))
                .await
                .expect("backup"),
        );
    }
    let discovery = ec2_discovery(&moto.endpoint());
    let config = world.config(&discovery, "").replace(
        r#""server_options": "check inter 200 fall 1 rise 1"}"#,
        &format!(
            r#""server_options": "check inter 200 fall 1 rise 1",
                "server_port_override": "{normal}", "server_backup_port": "{backup}"}}"#
        ),
    );
    let _synapse = Synapse::start(&config);
    world.start_haproxy().await;
    // Normal servers only, while they are up.
    world.wait_answering(&["n0", "n1"]).await;
    let cfg = world.haproxy_cfg();
    for inst in &instances {
        assert!(
            cfg.lines()
                .any(|l| l.contains(&format!("{}:{backup}", inst.private_ip))
                    && l.trim_end().contains(" backup")),
            "no backup server for {}:\n{cfg}",
            inst.private_ip
        );
    }
    for n in &mut normals {
        n.kill().await;
    }
    // HAProxy's checks mark the normal servers down; a backup answers (the first one:
    // without `option allbackups` HAProxy uses only the first backup).
    eventually(TIMEOUT, || async {
        let got = world.answering(4).await?;
        if got.iter().all(|id| id.starts_with('b')) {
            Ok(())
        } else {
            Err(format!("answering {got:?}"))
        }
    })
    .await;
}

/// etcd primary, ec2tag fallback (`multi` + `sequential`): etcd away → EC2's set; etcd
/// back → etcd's set; no request fails during either switch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_fallback_switches_to_ec2_and_back_without_failed_requests() {
    let moto = Moto::start().await;
    let mut etcd = Etcd::start().await;
    let mut world = World::new();
    let port = free_port();
    let inst = &moto.run_instances(1, &[("servicename", "true")]).await[0];
    let _ec2_backend = Backend::start_at("ec2", addr(&inst.private_ip, port))
        .await
        .expect("ec2 backend");
    // The etcd-registered instance listens on another loopback address, same port.
    let _etcd_backend = Backend::start_at("etcd", addr("127.0.0.1", port))
        .await
        .expect("etcd backend");
    let path = ServicePath::new("/it/fallback/web").expect("path");
    let reg = Registration {
        host: Host::Ip("127.0.0.1".parse().expect("ip")),
        port: Port::new(port).expect("port"),
        name: InstanceId::new("etcd-1").expect("name"),
        weight: None,
        haproxy_server_options: None,
        labels: Default::default(),
    };
    let mut client = etcd.client().await;
    client
        .put(format!("{}/etcd-1", path), reg.encode(), None)
        .await
        .expect("put");
    let discovery = format!(
        r#"{{"method": "multi", "resolver": {{"method": "sequential", "sequential_order": ["primary", "fallback"]}},
            "watchers": {{
              "primary": {{"method": "etcd", "hosts": ["{etcd}"], "path": "{path}", "progress_interval": 0.3,
                           "etcd": {{"dial_timeout": 0.5, "request_timeout": 1, "keepalive_interval": 0.5, "keepalive_timeout": 0.5}}}},
              "fallback": {ec2}
            }}}}"#,
        etcd = etcd.client_addr(),
        ec2 = ec2_discovery(&moto.endpoint()),
    );
    let config = world.config(&discovery, &format!(r#", "backend_port_override": {port}"#));
    let synapse = Synapse::start(&config);
    world.start_haproxy().await;
    world.wait_answering(&["etcd"]).await;

    // A bounded load loop (≤ 120 s, 20 ms apart) counts failed requests throughout.
    let failed = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let load = {
        let (failed, sent, stop, port) = (failed.clone(), sent.clone(), stop.clone(), world.port);
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while !stop.is_cancelled() && tokio::time::Instant::now() < deadline {
                sent.fetch_add(1, Ordering::Relaxed);
                match http_get(loopback(port), "/").await {
                    Ok(r) if r.status == 200 => {}
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    // The load loop must have run through each phase for "0 failed" to mean anything:
    // wait for its requests rather than asserting how many it managed.
    let through = |n: u64| {
        let sent = sent.clone();
        async move {
            eventually(TIMEOUT, || async { sent.load(Ordering::Relaxed) >= n }).await;
        }
    };
    through(sent.load(Ordering::Relaxed) + 5).await;
    etcd.kill().await;
    world.wait_answering(&["ec2"]).await;
    through(sent.load(Ordering::Relaxed) + 5).await;
    etcd.restart().await;
    world.wait_answering(&["etcd"]).await;
    through(sent.load(Ordering::Relaxed) + 5).await;
    stop.cancel();
    load.await.expect("load loop");
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(
        failed, 0,
        "{failed} of {sent} requests failed during the switches"
    );
    assert!(
        Counters::get(&synapse.counters.source_switches) >= 2,
        "source switches not counted"
    );
}

/// What [`FaultProxy`] does to the next EC2 requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Fault {
    Pass = 0,
    Http500,
    Throttle,
    Hang,
    MalformedXml,
    Truncated,
    /// The first page carries a `nextToken`; the request for the next page fails.
    FailSecondPage,
    ExpiredToken,
    /// Not a failure: moto's answer with hostile values written into one instance's
    /// address and DNS name (reliability B22), see [`HOSTILE_IP`].
    Hostile,
}

/// The instance address [`Fault::Hostile`] poisons; the rewrite keeps the rest of the
/// document as moto wrote it.
static HOSTILE_IP: std::sync::Mutex<String> = std::sync::Mutex::new(String::new());

const FAULTS: [Fault; 7] = [
    Fault::Http500,
    Fault::Throttle,
    Fault::Hang,
    Fault::MalformedXml,
    Fault::Truncated,
    Fault::FailSecondPage,
    Fault::ExpiredToken,
];

/// An HTTP/1.1 proxy to moto that injects [`Fault`]s and counts requests.
struct FaultProxy {
    addr: SocketAddr,
    fault: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy in front of `moto`'s endpoint.
    async fn in_front_of(moto: &Moto) -> Self {
        let addr = moto
            .endpoint()
            .trim_start_matches("http://")
            .parse()
            .expect("moto addr");
        Self::start(addr).await
    }

    async fn start(moto: SocketAddr) -> Self {
        let listener = TcpListener::bind(loopback(0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fault = Arc::new(AtomicU8::new(Fault::Pass as u8));
        let requests = Arc::new(AtomicU64::new(0));
        let (f, r) = (fault.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (f, r) = (f.clone(), r.clone());
                tokio::spawn(async move {
                    let _ = serve_one(conn, moto, f, r).await;
                });
            }
        });
        Self {
            addr,
            fault,
            requests,
            task,
        }
    }

    fn set(&self, fault: Fault) {
        self.fault.store(fault as u8, Ordering::SeqCst);
    }

    fn requests(&self) -> u64 {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_request(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = conn.read(&mut chunk).await?;
        if n == 0 {
            return Ok(buf);
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Ok(buf);
            }
        }
    }
}

async fn serve_one(
    mut conn: TcpStream,
    moto: SocketAddr,
    fault: Arc<AtomicU8>,
    requests: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let request = read_request(&mut conn).await?;
    requests.fetch_add(1, Ordering::SeqCst);
    let fault = fault.load(Ordering::SeqCst);
    let respond = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let error_doc = |code: &str| {
        format!("<Response><Errors><Error><Code>{code}</Code><Message>injected</Message></Error></Errors><RequestID>x</RequestID></Response>")
    };
    let text = String::from_utf8_lossy(&request);
    let reply = match fault {
        f if f == Fault::Http500 as u8 => {
            respond("500 Internal Server Error", &error_doc("InternalError"))
        }
        f if f == Fault::Throttle as u8 => respond(
            "503 Service Unavailable",
            &error_doc("RequestLimitExceeded"),
        ),
        f if f == Fault::ExpiredToken as u8 => {
            respond("400 Bad Request", &error_doc("RequestExpired"))
        }
        f if f == Fault::Hang as u8 => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            return Ok(());
        }
        f if f == Fault::MalformedXml as u8 => respond(
            "200 OK",
            "<DescribeInstancesResponse><reservationSet><item>&bogus;",
        ),
        f if f == Fault::FailSecondPage as u8 && text.contains("NextToken=") => {
            respond("500 Internal Server Error", &error_doc("InternalError"))
        }
        _ => {
            let body = forward(&request, moto).await?;
            match fault {
                f if f == Fault::Truncated as u8 => {
                    let cut = body.len() / 2;
                    respond("200 OK", &body[..cut])
                }
                f if f == Fault::FailSecondPage as u8 => respond(
                    "200 OK",
                    &body.replace(
                        "</DescribeInstancesResponse>",
                        "<nextToken>page-2</nextToken></DescribeInstancesResponse>",
                    ),
                ),
                f if f == Fault::Hostile as u8 => {
                    let ip = HOSTILE_IP.lock().expect("hostile ip").clone();
                    // A newline (as an XML character reference, as EC2 would escape it)
                    // followed by a config line, in the address and in the DNS name.
                    let evil = "&#10;server evil 127.0.0.1:1 check&#10;#";
                    respond(
                        "200 OK",
                        &body
                            .replace(
                                &format!("<privateIpAddress>{ip}</privateIpAddress>"),
                                &format!("<privateIpAddress>{ip}{evil}</privateIpAddress>"),
                            )
                            .replace(
                                "<privateDnsName>",
                                &format!("<privateDnsName>backend{evil}"),
                            ),
                    )
                }
                _ => respond("200 OK", &body),
            }
        }
    };
    conn.write_all(reply.as_bytes()).await?;
    conn.shutdown().await
}

/// Sends the request to moto (with `Connection: close`) and returns the response body.
async fn forward(request: &[u8], moto: SocketAddr) -> std::io::Result<String> {
    let mut upstream = TcpStream::connect(moto).await?;
    let text = String::from_utf8_lossy(request);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let head: Vec<&str> = head
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    upstream
        .write_all(format!("{}\r\nConnection: close\r\n\r\n{body}", head.join("\r\n")).as_bytes())
        .await?;
    let mut resp = Vec::new();
    upstream.read_to_end(&mut resp).await?;
    let resp = String::from_utf8_lossy(&resp).into_owned();
    Ok(resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_ec2_fault_leaves_the_routed_set_unchanged() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::in_front_of(&moto).await;
    let mut world = World::new();
    let port = free_port();
    let first = moto.run_instances(2, &[("servicename", "true")]).await;
    let _backends = backends_on(&first, port).await;
    let synapse = start_routing(&mut world, &format!("http://{}", proxy.addr), port).await;
    world.wait_answering(&["i0", "i1"]).await;
    let cfg_before = world.haproxy_cfg();

    // A change that must NOT be picked up while EC2 is failing: one instance stops,
    // once the first fault is in place.
    proxy.set(FAULTS[0]);
    let seen = proxy.requests();
    eventually(TIMEOUT, || async { proxy.requests() > seen }).await;
    moto.stop_instances(&[&first[1].id]).await;
    for fault in FAULTS {
        proxy.set(fault);
        let seen = proxy.requests();
        // At least two polls under this fault (retries back off from 1 s).
        eventually(TIMEOUT, || async { proxy.requests() >= seen + 2 }).await;
        assert_eq!(
            world.haproxy_cfg(),
            cfg_before,
            "haproxy.cfg changed under {fault:?}"
        );
        let got = world.answering(8).await.expect("requests during a fault");
        assert_eq!(
            got,
            BTreeSet::from(["i0".to_owned(), "i1".to_owned()]),
            "routed set changed under {fault:?}"
        );
    }
    // Recovery: the stopped instance is finally removed.
    proxy.set(Fault::Pass);
    world.wait_answering(&["i0"]).await;
    assert!(Counters::get(&synapse.counters.reloads) >= 1);
}

/// B22: hostile values from EC2 — a config line after a newline in one instance's address
/// and in every instance's DNS name (through a rewriting proxy, since moto hands out
/// addresses itself), and in tag values (written through moto). The poisoned instance is
/// skipped and counted as `invalid_host`; the others are routed under their instance ids;
/// no hostile byte reaches haproxy.cfg, which `haproxy -c` accepts (`do_checks`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_ec2_values_are_skipped_and_never_rendered() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::in_front_of(&moto).await;
    let mut world = World::new();
    let port = free_port();
    let evil_tag = "true\nserver evil 127.0.0.1:1 check";
    let good = moto
        .run_instances(2, &[("servicename", "true"), ("Name", evil_tag)])
        .await;
    // Tagged with a hostile value instead of "true": not this service's, never routed.
    let other = moto.run_instances(1, &[("servicename", evil_tag)]).await;
    let poisoned = moto.run_instances(1, &[("servicename", "true")]).await;
    *HOSTILE_IP.lock().expect("hostile ip") = poisoned[0].private_ip.clone();
    proxy.set(Fault::Hostile);
    let _backends = backends_on(good.iter().chain(&other).chain(&poisoned), port).await;
    let synapse = start_routing(&mut world, &format!("http://{}", proxy.addr), port).await;
    world.wait_answering(&["i0", "i1"]).await;
    eventually(TIMEOUT, || async {
        synapse.counters.rejected().get("invalid_host").copied() >= Some(1)
    })
    .await;
    let cfg = world.haproxy_cfg();
    for needle in ["evil", &poisoned[0].private_ip, &other[0].private_ip] {
        assert!(!cfg.contains(needle), "{needle:?} in haproxy.cfg:\n{cfg}");
    }
    // The good instances are named by their ids: their DNS names were poisoned too.
    for inst in &good {
        assert!(cfg.contains(&inst.id), "{} missing:\n{cfg}", inst.id);
    }
    let check = std::process::Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(world.dir.join("haproxy.cfg"))
        .output()
        .expect("haproxy -c");
    assert!(check.status.success(), "{check:?}");
}

/// airbnb's ec2tag spec config (the compatibility corpus, `synapse-services/05`) as
/// written — its tag name and value, its `server_port_override` given as a string — with
/// only what points at AWS changed to the test's moto (`endpoint`, and the region moto's
/// instances live in): instances tagged so are routed on the override port, others not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_ec2tag_service_routes() {
    let moto = Moto::start().await;
    let mut world = World::new();
    let corpus: serde_json::Value = serde_json::from_str(&common::upstream::corpus_file(
        "synapse-services/05-airbnb-spec-ec2tag-ec2tagtest.json",
    ))
    .expect("corpus json");
    let (tag, value) = (
        corpus["discovery"]["tag_name"].as_str().expect("tag_name"),
        corpus["discovery"]["tag_value"]
            .as_str()
            .expect("tag_value"),
    );
    let port: u16 = corpus["haproxy"]["server_port_override"]
        .as_str()
        .expect("a string, as written")
        .parse()
        .expect("port");
    let tagged = moto.run_instances(2, &[(tag, value)]).await;
    let other = moto.run_instances(1, &[(tag, "someOtherValue")]).await;
    let _backends = backends_on(tagged.iter().chain(&other), port).await;
    let mut discovery = corpus["discovery"].clone();
    discovery["endpoint"] = moto.endpoint().into();
    discovery["aws_region"] = "us-east-1".into();
    discovery["check_interval"] = 0.3.into();
    let mut config: serde_json::Value =
        serde_json::from_str(&world.config(&discovery.to_string(), "")).expect("config");
    config["services"]["web"]["haproxy"]["server_port_override"] =
        corpus["haproxy"]["server_port_override"].clone();
    let _synapse = Synapse::start(&config.to_string());
    world.start_haproxy().await;
    world.wait_answering(&["i0", "i1"]).await;
    assert!(!world.haproxy_cfg().contains(&other[0].private_ip));
}
