//! AWS credentials, resolved in SmartStack's (and the AWS SDKs') order: keys in the
//! config, the standard environment variables, the shared credentials file, then the
//! instance role through IMDSv2 (token first). Role credentials are cached and refreshed
//! before they expire. Secret parts are [`Secret`]s: never logged.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use common::imds::Imds;
use common::Secret;
use tokio::sync::Mutex;

/// The IMDS address on EC2. Tests and non-AWS clouds point `imds_endpoint` elsewhere.
pub const DEFAULT_IMDS_ENDPOINT: &str = common::imds::DEFAULT_ENDPOINT;
/// How long before expiry role credentials are refreshed.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

/// A set of AWS credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: Secret,
    pub session_token: Option<Secret>,
    /// When role credentials stop working; `None` for long-lived keys.
    pub expires: Option<SystemTime>,
}

/// Why no credentials could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("shared credentials file {path}: profile `{profile}` has no complete key pair")]
    Profile { path: PathBuf, profile: String },
    #[error("instance metadata service: {0}")]
    Imds(String),
}

/// Where credentials come from, decided once at start-up.
#[derive(Debug)]
enum Source {
    Fixed(Credentials),
    Imds {
        imds: Imds,
        cached: Mutex<Option<Credentials>>,
    },
}

/// Hands out current credentials.
#[derive(Debug)]
pub struct CredentialProvider {
    source: Source,
}

/// What the provider chain reads from outside: passed in so tests need not touch the
/// process environment or the home directory.
pub struct CredentialInputs<'a> {
    /// `aws_access_key_id` / `aws_secret_access_key` from the synapse config.
    pub config_keys: Option<(String, Secret)>,
    /// Reads an environment variable.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// `imds_endpoint` from the config, if set.
    pub imds_endpoint: Option<String>,
}

impl CredentialProvider {
    /// Fixed credentials (tests, or keys from the config).
    pub fn fixed(credentials: Credentials) -> Self {
        Self {
            source: Source::Fixed(credentials),
        }
    }

    /// Resolves the chain: config keys, then `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`
    /// (+ `AWS_SESSION_TOKEN`), then the shared credentials file
    /// (`AWS_SHARED_CREDENTIALS_FILE` or `~/.aws/credentials`, profile `AWS_PROFILE` or
    /// `default`), then IMDSv2 (`AWS_EC2_METADATA_SERVICE_ENDPOINT` or the config's
    /// `imds_endpoint`). IMDS is contacted lazily, on the first request.
    pub fn resolve(inputs: CredentialInputs<'_>) -> Result<Self, CredentialError> {
        if let Some((id, secret)) = inputs.config_keys {
            return Ok(Self::fixed(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: None,
                expires: None,
            }));
        }
        let env = inputs.env;
        if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Self::fixed(Credentials {
                access_key_id: id,
                secret_access_key: Secret::new(secret),
                session_token: env("AWS_SESSION_TOKEN").map(Secret::new),
                expires: None,
            }));
        }
        let file = env("AWS_SHARED_CREDENTIALS_FILE")
            .map(PathBuf::from)
            .or_else(|| env("HOME").map(|h| PathBuf::from(h).join(".aws/credentials")));
        if let Some(path) = file.filter(|p| p.is_file()) {
            let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".to_owned());
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if let Some(creds) = parse_shared_credentials(&text, &profile) {
                return Ok(Self::fixed(creds));
            }
            // A file without the profile is not an error if a role can be had: fall
            // through, but say so when the role is missing too.
            tracing::debug!(path = %path.display(), %profile, "profile not in shared credentials file");
        }
        let endpoint = env(common::imds::ENDPOINT_ENV)
            .or(inputs.imds_endpoint)
            .unwrap_or_else(|| DEFAULT_IMDS_ENDPOINT.to_owned());
        let imds = Imds::new(&endpoint).map_err(|e| CredentialError::Imds(e.to_string()))?;
        Ok(Self {
            source: Source::Imds {
                imds,
                cached: Mutex::new(None),
            },
        })
    }

    /// Current credentials; role credentials are fetched or refreshed as needed.
    pub async fn get(&self) -> Result<Credentials, CredentialError> {
        match &self.source {
            Source::Fixed(c) => Ok(c.clone()),
            Source::Imds { imds, cached } => {
                let mut cached = cached.lock().await;
                let fresh = cached.as_ref().is_some_and(|c| {
                    c.expires
                        .is_none_or(|e| e > SystemTime::now() + REFRESH_BEFORE)
                });
                if !fresh {
                    *cached = Some(fetch_role_credentials(imds).await?);
                }
                cached
                    .clone()
                    .ok_or_else(|| CredentialError::Imds("no credentials".into()))
            }
        }
    }

    /// Drops cached role credentials, e.g. after EC2 answered that they expired.
    pub async fn invalidate(&self) {
        if let Source::Imds { cached, .. } = &self.source {
            *cached.lock().await = None;
        }
    }
}

/// IMDSv2 (common's client: no redirects, no proxy, capped bodies): a session token,
/// then the role name, then the role's credentials.
async fn fetch_role_credentials(imds: &Imds) -> Result<Credentials, CredentialError> {
    let err = |e: common::imds::ImdsError| CredentialError::Imds(e.to_string());
    let token = imds.token().await.map_err(err)?;
    let roles = imds
        .get(&token, "/latest/meta-data/iam/security-credentials/")
        .await
        .map_err(err)?;
    let role = roles
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| CredentialError::Imds("the instance has no IAM role".into()))?
        .to_owned();
    if !role
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    {
        return Err(CredentialError::Imds("malformed role name".into()));
    }
    let body = imds
        .get(
            &token,
            &format!("/latest/meta-data/iam/security-credentials/{role}"),
        )
        .await
        .map_err(err)?;
    parse_role_credentials(&body)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RoleCredentials {
    access_key_id: String,
    secret_access_key: String,
    token: Option<String>,
    expiration: Option<String>,
}

fn parse_role_credentials(body: &str) -> Result<Credentials, CredentialError> {
    let raw: RoleCredentials = serde_json::from_str(body)
        .map_err(|_| CredentialError::Imds("malformed credentials document".into()))?;
    Ok(Credentials {
        access_key_id: raw.access_key_id,
        secret_access_key: Secret::new(raw.secret_access_key),
        session_token: raw.token.map(Secret::new),
        expires: raw.expiration.as_deref().and_then(parse_rfc3339_utc),
    })
}

/// `2026-11-25T12:34:56Z` → a time. Only the UTC `Z` form IMDS uses.
fn parse_rfc3339_utc(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    u64::try_from(secs)
        .ok()
        .map(|s| SystemTime::UNIX_EPOCH + Duration::from_secs(s))
}

/// Reads `[profile]` from an INI-style shared credentials file.
fn parse_shared_credentials(text: &str, profile: &str) -> Option<Credentials> {
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            in_profile = name.trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_owned();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key_id: id?,
        secret_access_key: Secret::new(secret?),
        session_token: token.map(Secret::new),
        expires: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[tokio::test]
    async fn chain_prefers_config_then_env_then_file() {
        let env = env_of(&[
            ("AWS_ACCESS_KEY_ID", "ENVID"),
            ("AWS_SECRET_ACCESS_KEY", "envsecret"),
        ]);
        let p = CredentialProvider::resolve(CredentialInputs {
            config_keys: Some(("CFGID".into(), Secret::new("cfg"))),
            env: &env,
            imds_endpoint: None,
        })
        .unwrap();
        assert_eq!(p.get().await.unwrap().access_key_id, "CFGID");
        let p = CredentialProvider::resolve(CredentialInputs {
            config_keys: None,
            env: &env,
            imds_endpoint: None,
        })
        .unwrap();
        assert_eq!(p.get().await.unwrap().access_key_id, "ENVID");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(
            &file,
            "[default]\naws_access_key_id = DEF\naws_secret_access_key = d\n\n[ops]\naws_access_key_id=OPS\naws_secret_access_key=o\naws_session_token=t\n",
        )
        .unwrap();
        let path = file.to_str().unwrap();
        let env = env_of(&[
            ("AWS_SHARED_CREDENTIALS_FILE", path),
            ("AWS_PROFILE", "ops"),
        ]);
        let p = CredentialProvider::resolve(CredentialInputs {
            config_keys: None,
            env: &env,
            imds_endpoint: None,
        })
        .unwrap();
        let c = p.get().await.unwrap();
        assert_eq!(c.access_key_id, "OPS");
        assert_eq!(c.session_token.unwrap().expose(), "t");
    }

    #[test]
    fn role_document_and_times() {
        let c = parse_role_credentials(
            r#"{"Code":"Success","AccessKeyId":"ASIA","SecretAccessKey":"s","Token":"tok","Expiration":"2026-11-25T12:00:00Z","Type":"AWS-HMAC"}"#,
        )
        .unwrap();
        assert_eq!(c.access_key_id, "ASIA");
        assert_eq!(
            c.expires
                .unwrap()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs(),
            1_795_608_000
        );
        assert_eq!(
            parse_rfc3339_utc("1970-01-01T00:00:00Z"),
            Some(SystemTime::UNIX_EPOCH)
        );
        assert_eq!(parse_rfc3339_utc("2026-13-01T00:00:00Z"), None);
        assert!(parse_role_credentials("<html>").is_err());
    }

    /// A minimal IMDSv2 on loopback: `PUT /latest/api/token`, then GETs that must carry
    /// the token. Counts token requests; `expiration` is what the role document says.
    async fn fake_imds(
        expiration: &'static str,
    ) -> (String, std::sync::Arc<std::sync::atomic::AtomicU32>) {
        use std::sync::atomic::{AtomicU32, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tokens = std::sync::Arc::new(AtomicU32::new(0));
        let counter = tokens.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let line = req.lines().next().unwrap_or("").to_owned();
                let has_token = req
                    .to_ascii_lowercase()
                    .contains("x-aws-ec2-metadata-token: tok-");
                let (status, body) = if line.starts_with("PUT /latest/api/token") {
                    let k = counter.fetch_add(1, Ordering::SeqCst);
                    ("200 OK", format!("tok-{k}"))
                } else if !has_token {
                    ("401 Unauthorized", String::new())
                } else if line.starts_with("GET /latest/meta-data/iam/security-credentials/ ") {
                    ("200 OK", "synapse-role\n".to_owned())
                } else if line
                    .starts_with("GET /latest/meta-data/iam/security-credentials/synapse-role ")
                {
                    (
                        "200 OK",
                        format!(
                            r#"{{"Code":"Success","AccessKeyId":"ASIAROLE","SecretAccessKey":"rolesecret","Token":"session","Expiration":"{expiration}"}}"#
                        ),
                    )
                } else {
                    ("404 Not Found", String::new())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), tokens)
    }

    fn imds_provider(endpoint: String) -> CredentialProvider {
        let env = env_of(&[]);
        CredentialProvider::resolve(CredentialInputs {
            config_keys: None,
            env: &env,
            imds_endpoint: Some(endpoint),
        })
        .unwrap()
    }

    #[tokio::test]
    async fn imds_redirects_are_not_followed_and_bodies_are_capped() {
        use crate::ec2::test_server::server;
        use std::sync::atomic::Ordering;
        let (elsewhere, hits) =
            server("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntok".into(), 0).await;
        let (imds, _) = server(
            format!("HTTP/1.1 302 Found\r\nLocation: {elsewhere}/latest/api/token\r\nContent-Length: 0\r\n\r\n"),
            0,
        )
        .await;
        let err = imds_provider(imds).get().await.unwrap_err().to_string();
        assert!(err.contains("302"), "{err}");
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
        let (big, _) = server(
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".into(),
            1024 * 1024,
        )
        .await;
        let err = imds_provider(big).get().await.unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[tokio::test]
    async fn imdsv2_token_first_then_role_credentials_cached_until_near_expiry() {
        use std::sync::atomic::Ordering;
        // Far in the future: fetched once, then served from the cache.
        let (endpoint, tokens) = fake_imds("2099-01-01T00:00:00Z").await;
        let p = imds_provider(endpoint);
        let c = p.get().await.unwrap();
        assert_eq!(c.access_key_id, "ASIAROLE");
        assert_eq!(c.secret_access_key.expose(), "rolesecret");
        assert_eq!(c.session_token.as_ref().unwrap().expose(), "session");
        p.get().await.unwrap();
        assert_eq!(
            tokens.load(Ordering::SeqCst),
            1,
            "cached credentials refetched"
        );
        // After EC2 says the credentials expired, the next call fetches anew.
        p.invalidate().await;
        p.get().await.unwrap();
        assert_eq!(tokens.load(Ordering::SeqCst), 2);

        // Already expired (or within five minutes of it): refreshed on every call.
        let (endpoint, tokens) = fake_imds("2000-01-01T00:00:00Z").await;
        let p = imds_provider(endpoint);
        p.get().await.unwrap();
        p.get().await.unwrap();
        assert_eq!(tokens.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn imds_unreachable_is_an_error_not_a_hang() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let p = imds_provider(format!("http://127.0.0.1:{port}"));
        assert!(matches!(p.get().await, Err(CredentialError::Imds(_))));
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = parse_shared_credentials(
            "[default]\naws_access_key_id=A\naws_secret_access_key=hunter2\n",
            "default",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
