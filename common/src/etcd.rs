//! etcd connection settings shared by both daemons, and `connect()`.
//!
//! Config form (nested under an `etcd` key, or built from SmartStack's flat keys):
//!
//! ```json
//! { "endpoints": ["https://10.0.0.1:2379", "10.0.0.2:2379"],
//!   "dial_timeout": 5, "request_timeout": 5,
//!   "keepalive_interval": 10, "keepalive_timeout": 5,
//!   "ca_file": "/etc/etcd/ca.pem", "cert_file": "/etc/etcd/client.pem",
//!   "key_file": "/etc/etcd/client-key.pem", "tls_server_name": "etcd.internal",
//!   "username": "nerve", "password_file": "/run/secrets/etcd" }
//! ```
//!
//! A username and password go only over `https://` or to a loopback address, unless
//! `"allow_insecure_auth": true`; an endpoint never holds credentials (`user:pass@`), so
//! endpoints are safe to log.

use std::path::{Path, PathBuf};
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};
use serde::Deserialize;

use crate::config::{join_path, ConfigErrors, Seconds};
use crate::secret::Secret;

/// etcd's default client endpoint.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The `etcd` block of a config file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdFile {
    /// `http(s)://host:port` or `host:port`.
    #[serde(default)]
    pub endpoints: Vec<String>,
    pub dial_timeout: Option<Seconds>,
    pub request_timeout: Option<Seconds>,
    pub keepalive_interval: Option<Seconds>,
    pub keepalive_timeout: Option<Seconds>,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub tls_server_name: Option<String>,
    pub username: Option<String>,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// Send the username and password over plain `http://` to a non-loopback endpoint.
    #[serde(default)]
    pub allow_insecure_auth: bool,
}

/// Validated etcd connection settings.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSettings {
    /// Full URLs (`http://…` or `https://…`).
    pub endpoints: Vec<String>,
    pub dial_timeout: Duration,
    pub request_timeout: Duration,
    /// HTTP/2 keep-alive pings, so a blackholed connection is noticed.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    pub tls: Option<TlsSettings>,
    pub auth: Option<Auth>,
    /// `allow_insecure_auth`: see [`EtcdSettings::check_auth_transport`].
    pub allow_insecure_auth: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub server_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub username: String,
    pub password: Secret,
}

impl Default for EtcdSettings {
    fn default() -> Self {
        Self {
            endpoints: vec![DEFAULT_ENDPOINT.to_owned()],
            dial_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            tls: None,
            auth: None,
            allow_insecure_auth: false,
        }
    }
}

impl EtcdFile {
    /// Validates into settings, pushing errors under `path` (e.g. `etcd`).
    /// `extra_endpoints` are SmartStack-style `host:port` strings from flat keys.
    pub fn validate(&self, path: &str, errors: &mut ConfigErrors) -> EtcdSettings {
        let defaults = EtcdSettings::default();
        let tls_wanted = self.ca_file.is_some() || self.cert_file.is_some();
        let mut endpoints = Vec::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            match normalize_endpoint(ep, tls_wanted) {
                Ok(url) => endpoints.push(url),
                Err(why) => errors.push(join_path(path, &format!("endpoints.{i}")), why),
            }
        }
        if endpoints.is_empty() && self.endpoints.is_empty() {
            endpoints = defaults.endpoints.clone();
        }
        let positive =
            |value: Option<Seconds>, key: &str, default: Duration, errors: &mut ConfigErrors| {
                match value {
                    Some(Seconds(d)) if d.is_zero() => {
                        errors.push(join_path(path, key), "must be greater than 0");
                        default
                    }
                    Some(Seconds(d)) => d,
                    None => default,
                }
            };
        let dial_timeout = positive(
            self.dial_timeout,
            "dial_timeout",
            defaults.dial_timeout,
            errors,
        );
        let request_timeout = positive(
            self.request_timeout,
            "request_timeout",
            defaults.request_timeout,
            errors,
        );
        let keepalive_interval = positive(
            self.keepalive_interval,
            "keepalive_interval",
            defaults.keepalive_interval,
            errors,
        );
        let keepalive_timeout = positive(
            self.keepalive_timeout,
            "keepalive_timeout",
            defaults.keepalive_timeout,
            errors,
        );
        if self.cert_file.is_some() != self.key_file.is_some() {
            errors.push(
                join_path(
                    path,
                    if self.cert_file.is_some() {
                        "key_file"
                    } else {
                        "cert_file"
                    },
                ),
                "cert_file and key_file go together",
            );
        }
        for (key, file) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(file) = file {
                if !file.is_file() {
                    errors.push(
                        join_path(path, key),
                        format_args!("{} is not a readable file", file.display()),
                    );
                }
            }
        }
        let tls = (tls_wanted || self.tls_server_name.is_some()).then(|| TlsSettings {
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
            server_name: self.tls_server_name.clone(),
        });
        let password = match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => {
                errors.push(
                    join_path(path, "password_file"),
                    "give password or password_file, not both",
                );
                None
            }
            (Some(p), None) => Some(p.clone()),
            (None, Some(file)) => match read_secret_file(file) {
                Ok(p) => Some(p),
                Err(why) => {
                    errors.push(join_path(path, "password_file"), why);
                    None
                }
            },
            (None, None) => None,
        };
        let auth = match (&self.username, password) {
            (Some(username), Some(password)) => Some(Auth {
                username: username.clone(),
                password,
            }),
            (Some(_), None) if !errors.mentions(&join_path(path, "password_file")) => {
                errors.push(
                    join_path(path, "password"),
                    "username needs a password or password_file",
                );
                None
            }
            (None, Some(_)) => {
                errors.push(join_path(path, "username"), "a password needs a username");
                None
            }
            _ => None,
        };
        EtcdSettings {
            endpoints,
            dial_timeout,
            request_timeout,
            keepalive_interval,
            keepalive_timeout,
            tls,
            auth,
            allow_insecure_auth: self.allow_insecure_auth,
        }
    }
}

impl EtcdSettings {
    /// Refuses a username and password sent in clear: with auth, every endpoint must be
    /// `https://` or loopback, unless `allow_insecure_auth`. Call once the endpoints are
    /// final (after SmartStack's flat keys were merged); `path` is the `etcd` block's.
    pub fn check_auth_transport(&self, path: &str, errors: &mut ConfigErrors) {
        if self.auth.is_none() || self.allow_insecure_auth {
            return;
        }
        if self
            .endpoints
            .iter()
            .any(|ep| ep.starts_with("http://") && !is_loopback_url(ep))
        {
            errors.push(
                join_path(path, "allow_insecure_auth"),
                "a username and password would go over plain http:// to a non-loopback \
                 endpoint; use https:// (ca_file) or set allow_insecure_auth: true",
            );
        }
    }
}

/// Whether a URL (`scheme://host[:port][/path]`) names a loopback host (`127.0.0.0/8`,
/// `::1`, `localhost`).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `host:port` → `http://host:port` (or `https://` when TLS is configured); full URLs
/// are checked for their scheme.
pub fn normalize_endpoint(ep: &str, tls: bool) -> Result<String, &'static str> {
    let ep = ep.trim();
    let (scheme, rest) = match ep.split_once("://") {
        Some((s @ ("http" | "https"), rest)) => (s, rest),
        Some(_) => return Err("scheme must be http or https"),
        None => (if tls { "https" } else { "http" }, ep),
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('@') {
        // Never echo it: it may hold a password.
        return Err("must not hold credentials (user:pass@); use username and password_file");
    }
    let Some((host, port)) = rest.rsplit_once(':') else {
        return Err("must be host:port or a URL with a port");
    };
    if host.is_empty() || host.contains('/') || host.chars().any(char::is_whitespace) {
        return Err("host is empty or malformed");
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 => Ok(format!("{scheme}://{host}:{port}")),
        _ => Err("port must be from 1 to 65535"),
    }
}

/// Reads a secret from a file that only its owner may read (mode 0600/0400); the trailing
/// newline is dropped. A group- or world-readable file is refused, as its secret is
/// probably not secret any more.
pub fn read_secret_file(file: &Path) -> Result<Secret, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta =
        std::fs::metadata(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} is readable by group or others; chmod 600 it",
            file.display()
        ));
    }
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    Ok(Secret::new(text.trim_end_matches(['\r', '\n'])))
}

/// Errors from connecting to etcd.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read TLS file {path}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot connect to etcd")]
    Etcd(#[from] etcd_client::Error),
}

impl EtcdSettings {
    /// The client options these settings describe.
    pub fn connect_options(&self) -> Result<ConnectOptions, ConnectError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(self.dial_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(self.keepalive_interval, self.keepalive_timeout)
            .with_keep_alive_while_idle(true)
            // etcd-client tries endpoints in turn; require_leader on watches is per call.
            .with_tcp_keepalive(self.keepalive_interval.max(Duration::from_secs(1)));
        if let Some(auth) = &self.auth {
            // Tokens expire (`--auth-token-ttl`, 5 min by default): a request that meets
            // an expired one logs in again and is retried, rather than failing until
            // the process restarts.
            opts = opts
                .with_user(auth.username.clone(), auth.password.expose())
                .with_auto_token_refresh(true);
        }
        if let Some(tls) = &self.tls {
            let read = |path: &PathBuf| {
                std::fs::read(path).map_err(|source| ConnectError::TlsFile {
                    path: path.clone(),
                    source,
                })
            };
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_file {
                t = t.ca_certificate(Certificate::from_pem(read(ca)?));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            if let Some(name) = &tls.server_name {
                t = t.domain_name(name.clone());
            }
            opts = opts.with_tls(t);
        }
        Ok(opts)
    }
}

/// Connects to etcd. With a username, this authenticates at once, so bad credentials
/// fail here rather than on the first request.
pub async fn connect(settings: &EtcdSettings) -> Result<Client, ConnectError> {
    let opts = settings.connect_options()?;
    Ok(Client::connect(settings.endpoints.clone(), Some(opts)).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_normalized() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:2379", false).unwrap(),
            "http://127.0.0.1:2379"
        );
        assert_eq!(
            normalize_endpoint("etcd:2379", true).unwrap(),
            "https://etcd:2379"
        );
        assert_eq!(
            normalize_endpoint("https://[::1]:2379/", false).unwrap(),
            "https://[::1]:2379"
        );
        assert!(normalize_endpoint("ftp://a:1", false).is_err());
        assert!(normalize_endpoint("a", false).is_err());
        assert!(normalize_endpoint("a:0", false).is_err());
        assert!(normalize_endpoint(":2379", false).is_err());
        let err = normalize_endpoint("http://root:hunter2@etcd:2379", false).unwrap_err();
        assert!(
            err.contains("credentials") && !err.contains("hunter2"),
            "{err}"
        );
        assert!(normalize_endpoint("root@etcd:2379", false).is_err());
    }

    fn auth_errors(json: &str) -> ConfigErrors {
        let file: EtcdFile = crate::config::parse(json).unwrap();
        let mut errors = ConfigErrors::default();
        file.validate("etcd", &mut errors)
            .check_auth_transport("etcd", &mut errors);
        errors
    }

    #[test]
    fn loopback_urls() {
        for yes in [
            "http://127.0.0.1:2379",
            "http://127.9.0.1",
            "http://localhost/x",
            "http://[::1]:5000/",
            "LOCALHOST:1",
        ] {
            assert!(is_loopback_url(yes), "{yes}");
        }
        for no in [
            "http://10.0.0.1:2379",
            "http://localhost.evil.com/",
            "http://127.0.0.1.nip.io/",
            "https://ec2.us-east-1.amazonaws.com",
            "http://[::2]:1",
        ] {
            assert!(!is_loopback_url(no), "{no}");
        }
    }

    #[test]
    fn passwords_do_not_go_over_plain_http() {
        let refused = auth_errors(
            r#"{"endpoints":["http://10.0.0.1:2379"],"username":"u","password":"hunter2"}"#,
        );
        assert!(refused.mentions("etcd.allow_insecure_auth"), "{refused}");
        assert!(!refused.to_string().contains("hunter2"), "{refused}");
        for ok in [
            r#"{"endpoints":["https://10.0.0.1:2379"],"username":"u","password":"p"}"#,
            r#"{"endpoints":["http://127.0.0.1:2379","localhost:2379","[::1]:2379"],"username":"u","password":"p"}"#,
            r#"{"endpoints":["http://10.0.0.1:2379"],"username":"u","password":"p","allow_insecure_auth":true}"#,
            r#"{"endpoints":["http://10.0.0.1:2379"]}"#,
        ] {
            let errors = auth_errors(ok);
            assert!(errors.is_empty(), "{ok}: {errors}");
        }
    }

    #[test]
    fn defaults_and_errors() {
        let mut errors = ConfigErrors::default();
        let s = EtcdFile::default().validate("etcd", &mut errors);
        assert!(errors.is_empty());
        assert_eq!(s, EtcdSettings::default());

        let file: EtcdFile = crate::config::parse(
            r#"{"endpoints":["bad"],"dial_timeout":0,"cert_file":"/nonexistent","username":"u"}"#,
        )
        .unwrap();
        let mut errors = ConfigErrors::default();
        file.validate("etcd", &mut errors);
        for p in [
            "etcd.endpoints.0",
            "etcd.dial_timeout",
            "etcd.key_file",
            "etcd.cert_file",
            "etcd.password",
        ] {
            assert!(errors.mentions(p), "{p} not in {errors}");
        }
    }

    #[test]
    fn password_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("common-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "hunter2\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret_file(&file).unwrap_err();
        assert!(
            err.contains("chmod 600") && !err.contains("hunter2"),
            "{err}"
        );
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret_file(&file).unwrap().expose(), "hunter2");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
