//! Test certificates made with Debian's `openssl` CLI: a CA, a server certificate for
//! `127.0.0.1`/`localhost` and a client certificate signed by it, and a second, unrelated
//! CA with its own client certificate (for "wrong CA" and "unknown client" failures).
//! EC P-256 keys, X.509 v3 with subjectAltName, valid for two days. The files live in a
//! temp dir deleted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::etcd::{EtcdSettings, TlsSettings};
use tempfile::TempDir;

/// A CA and the certificates it signed, as PEM files.
#[derive(Debug)]
pub struct TestPki {
    dir: TempDir,
}

/// Which client identity a [`TestPki::settings`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTls {
    /// The right CA and a client certificate it signed.
    Trusted,
    /// The right CA, no client certificate.
    NoClientCert,
    /// A CA that did not sign the server's certificate (plus the right client cert).
    WrongCa,
    /// The right CA and a client certificate signed by another CA.
    ForeignClientCert,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("cannot run openssl (apt-get install openssl): {e}"));
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestPki {
    /// Generates everything (about a dozen `openssl` runs). Panics if openssl fails.
    pub fn generate() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("it-pki-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir: {e}"));
        let d = dir.path();
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n\
             basicConstraints=CA:FALSE\n",
        )
        .expect("write server.ext");
        std::fs::write(
            d.join("client.ext"),
            "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write client.ext");
        for ca in ["ca", "other-ca"] {
            openssl(
                d,
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN=it-{ca}"),
                    "-keyout",
                    &format!("{ca}.key"),
                    "-out",
                    &format!("{ca}.pem"),
                ],
            );
        }
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("foreign-client", "other-ca", "client.ext"),
        ] {
            openssl(
                d,
                &[
                    "req",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    &format!("/CN=it-{name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
            );
            openssl(
                d,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{ca}.pem"),
                    "-CAkey",
                    &format!("{ca}.key"),
                    "-CAcreateserial",
                    "-days",
                    "2",
                    "-extfile",
                    ext,
                    "-out",
                    &format!("{name}.pem"),
                ],
            );
        }
        Self { dir }
    }

    /// A file in the PKI dir, e.g. `ca.pem`, `server.key`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// etcd's flags for TLS on the client port with client-certificate auth.
    pub fn etcd_server_args(&self) -> Vec<String> {
        let p = |n: &str| self.path(n).display().to_string();
        vec![
            format!("--cert-file={}", p("server.pem")),
            format!("--key-file={}", p("server.key")),
            "--client-cert-auth".to_owned(),
            format!("--trusted-ca-file={}", p("ca.pem")),
        ]
    }

    /// The TLS part of a client's settings.
    pub fn client(&self, which: ClientTls) -> TlsSettings {
        let (ca, cert) = match which {
            ClientTls::Trusted => ("ca.pem", Some("client")),
            ClientTls::NoClientCert => ("ca.pem", None),
            ClientTls::WrongCa => ("other-ca.pem", Some("client")),
            ClientTls::ForeignClientCert => ("ca.pem", Some("foreign-client")),
        };
        TlsSettings {
            ca_file: Some(self.path(ca)),
            cert_file: cert.map(|c| self.path(&format!("{c}.pem"))),
            key_file: cert.map(|c| self.path(&format!("{c}.key"))),
            server_name: None,
        }
    }

    /// Client settings for `endpoints` with this identity (test timeouts).
    pub fn settings(&self, endpoints: Vec<String>, which: ClientTls) -> EtcdSettings {
        EtcdSettings {
            endpoints,
            dial_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            tls: Some(self.client(which)),
            ..EtcdSettings::default()
        }
    }

    /// The `"etcd": {…}` TLS keys of a nerve or synapse config for this identity.
    pub fn config_keys(&self, which: ClientTls) -> String {
        let t = self.client(which);
        let mut keys = vec![format!(
            r#""ca_file": "{}""#,
            t.ca_file.expect("ca").display()
        )];
        if let (Some(cert), Some(key)) = (t.cert_file, t.key_file) {
            keys.push(format!(r#""cert_file": "{}""#, cert.display()));
            keys.push(format!(r#""key_file": "{}""#, key.display()));
        }
        keys.join(", ")
    }
}
