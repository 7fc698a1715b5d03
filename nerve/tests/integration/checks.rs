//! The `http` check with `ssl` against a real TLS server (`openssl s_server`) using a
//! certificate from a private CA: accepted without verification, refused with it (the CA
//! is not a system root), accepted when the CA is given as `ssl_ca_file`.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use integration_tests::{eventually, free_port, Workdir};
use nerve::check::{Check, HttpCheck};
use nerve::config::HttpCheckConfig;

/// `openssl s_server -www` on 127.0.0.1, killed on drop.
struct TlsServer {
    child: Child,
    port: u16,
}

impl TlsServer {
    /// Writes a self-signed CA (`ca.pem`, `ca-key.pem`) and a server certificate it
    /// signed for 127.0.0.1 (`cert.pem`, `key.pem`) into `dir`.
    fn make_certificates(dir: &Workdir) {
        let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca-key.pem"));
        let (csr, cert, key) = (
            dir.join("req.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
        );
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            Command::new("openssl")
                .args(["req", "-x509", "-days", "1", "-subj", "/CN=test CA"])
                .args(ec)
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca),
        );
        openssl(
            Command::new("openssl")
                .args(["req", "-subj", "/CN=localhost"])
                .args(ec)
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        );
        let ext = dir.write(
            "ext.cnf",
            "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        );
        openssl(
            Command::new("openssl")
                .args(["x509", "-req", "-days", "1", "-CAcreateserial"])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        );
    }

    /// Serves with `cert` and `key`.
    async fn start(cert: &Path, key: &Path) -> Self {
        let port = free_port();
        let child = Command::new("openssl")
            .args(["s_server", "-www", "-quiet", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(cert)
            .arg("-key")
            .arg(key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let server = Self { child, port };
        eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        server
    }
}

fn openssl(command: &mut Command) {
    let out = command.output().expect("run openssl");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn https(port: u16, verify: bool, ca: Option<std::path::PathBuf>) -> HttpCheck {
    let config = HttpCheckConfig {
        url: format!("https://127.0.0.1:{port}/health"),
        ssl_verify: verify,
        ssl_ca_file: ca,
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_secs(5),
        total_timeout: Duration::from_secs(10),
        headers: Vec::new(),
        expect: None,
    };
    HttpCheck::new("https".into(), &config).expect("build the check")
}

#[tokio::test]
async fn ssl_with_and_without_certificate_verification() {
    let dir = Workdir::new();
    TlsServer::make_certificates(&dir);
    let server = TlsServer::start(&dir.join("cert.pem"), &dir.join("key.pem")).await;

    https(server.port, false, None)
        .check()
        .await
        .expect("ssl_verify false accepts an untrusted certificate");
    let refused = https(server.port, true, None).check().await;
    assert!(
        refused.is_err(),
        "an untrusted certificate passed verification"
    );
    https(server.port, true, Some(dir.join("ca.pem")))
        .check()
        .await
        .expect("ssl_ca_file makes the certificate trusted");

    // A self-signed server certificate (the CA's own) works without verification.
    let self_signed = TlsServer::start(&dir.join("ca.pem"), &dir.join("ca-key.pem")).await;
    https(self_signed.port, false, None)
        .check()
        .await
        .expect("ssl_verify false accepts a self-signed certificate");
    assert!(https(self_signed.port, true, None).check().await.is_err());
}
