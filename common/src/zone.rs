//! The availability zone of a host. nerve registers it as the `zone` label of every
//! registration; synapse prefers servers whose `zone` label is its own (`prefer_zone`).
//!
//! A daemon's zone comes from, in order: its config's `zone`; the environment
//! (`NERVE_ZONE`, `SYNAPSE_ZONE`); EC2's instance metadata
//! (`placement/availability-zone`) when the config says `zone_from_imds: true`.
//! Without any, there is no zone: nerve registers no `zone` label, and synapse routes
//! to every zone alike.

use crate::imds::{Imds, ImdsError};

/// The label nerve writes and synapse reads.
pub const LABEL: &str = "zone";
/// The longest zone accepted (EC2's are about 15 characters).
pub const MAX_LEN: usize = 64;

/// `Err` says why `zone` is not a zone name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn validate(zone: &str) -> Result<(), String> {
    if zone.is_empty() || zone.len() > MAX_LEN {
        return Err(format!("must be 1 to {MAX_LEN} characters"));
    }
    if !zone
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err("may hold only letters, digits, '.', '_' and '-'".into());
    }
    Ok(())
}

/// Where a daemon's zone came from (for the start-up log and `/status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    Config,
    Environment,
    Imds,
}

/// How to find the zone: the config's `zone`, the environment variable's value, and the
/// IMDS endpoint when `zone_from_imds` is on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ZoneSource {
    pub configured: Option<String>,
    pub env: Option<String>,
    pub imds_endpoint: Option<String>,
}

/// Why no zone could be found where the config said to look.
#[derive(Debug, thiserror::Error)]
pub enum ZoneError {
    #[error("the {var} environment variable {message}")]
    Env { var: &'static str, message: String },
    #[error(transparent)]
    Imds(#[from] ImdsError),
    #[error("IMDS at {endpoint} answered an availability zone that {message}")]
    BadImdsZone { endpoint: String, message: String },
}

/// The zone, and where it came from; `Ok(None)` when nothing says. `env_var` names the
/// variable whose value is `source.env`, for errors.
pub async fn find(
    source: &ZoneSource,
    env_var: &'static str,
) -> Result<Option<(String, Origin)>, ZoneError> {
    if let Some(zone) = &source.configured {
        return Ok(Some((zone.clone(), Origin::Config)));
    }
    if let Some(zone) = source
        .env
        .as_deref()
        .map(str::trim)
        .filter(|z| !z.is_empty())
    {
        validate(zone).map_err(|message| ZoneError::Env {
            var: env_var,
            message,
        })?;
        return Ok(Some((zone.to_owned(), Origin::Environment)));
    }
    let Some(endpoint) = &source.imds_endpoint else {
        return Ok(None);
    };
    let imds = Imds::new(endpoint)?;
    let token = imds.token().await?;
    let zone = imds
        .get(&token, "/latest/meta-data/placement/availability-zone")
        .await?;
    let zone = zone.trim();
    validate(zone).map_err(|message| ZoneError::BadImdsZone {
        endpoint: imds.endpoint().to_owned(),
        message,
    })?;
    Ok(Some((zone.to_owned(), Origin::Imds)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn zone_names() {
        for ok in [
            "us-east-1a",
            "eu-west-3c",
            "zone_1",
            "a",
            &"z".repeat(MAX_LEN),
        ] {
            assert_eq!(validate(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "us east",
            "a\nb",
            "x/y",
            "<script>",
            &"z".repeat(MAX_LEN + 1),
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
    }

    /// A minimal IMDSv2 on loopback: the token must come first and be sent back.
    async fn fake_imds(zone: &'static str) -> (String, Arc<AtomicBool>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token_checked = Arc::new(AtomicBool::new(false));
        let checked = token_checked.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_ascii_lowercase();
                let body = if req.starts_with("put /latest/api/token")
                    && req.contains("x-aws-ec2-metadata-token-ttl-seconds")
                {
                    "tok-123"
                } else if req.starts_with("get /latest/meta-data/placement/availability-zone")
                    && req.contains("x-aws-ec2-metadata-token: tok-123")
                {
                    checked.store(true, Ordering::SeqCst);
                    zone
                } else {
                    let _ = s
                        .write_all(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    continue;
                };
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            }
        });
        (format!("http://{addr}"), token_checked)
    }

    #[tokio::test]
    async fn config_then_environment_then_imds() {
        let (imds, token_checked) = fake_imds("zz-test-1b").await;
        let all = ZoneSource {
            configured: Some("from-config".into()),
            env: Some("from-env".into()),
            imds_endpoint: Some(imds.clone()),
        };
        let find = |s: ZoneSource| async move { find(&s, "NERVE_ZONE").await };
        assert_eq!(
            find(all.clone()).await.unwrap(),
            Some(("from-config".into(), Origin::Config))
        );
        let no_config = ZoneSource {
            configured: None,
            ..all.clone()
        };
        assert_eq!(
            find(no_config.clone()).await.unwrap(),
            Some(("from-env".into(), Origin::Environment))
        );
        let imds_only = ZoneSource {
            env: Some("  ".into()),
            ..no_config
        };
        assert!(!token_checked.load(Ordering::SeqCst));
        assert_eq!(
            find(imds_only).await.unwrap(),
            Some(("zz-test-1b".into(), Origin::Imds))
        );
        assert!(token_checked.load(Ordering::SeqCst), "no IMDSv2 token sent");
        assert_eq!(find(ZoneSource::default()).await.unwrap(), None);

        let bad_env = ZoneSource {
            env: Some("a zone".into()),
            ..ZoneSource::default()
        };
        let e = find(bad_env).await.unwrap_err().to_string();
        assert!(e.contains("NERVE_ZONE"), "{e}");
    }

    #[tokio::test]
    async fn imds_failures_name_the_endpoint() {
        let (imds, _) = fake_imds("not a zone\n<x>").await;
        let e = find(
            &ZoneSource {
                imds_endpoint: Some(imds.clone()),
                ..ZoneSource::default()
            },
            "SYNAPSE_ZONE",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains(&imds) && e.contains("letters"), "{e}");
        // Nothing listening: an error naming the endpoint, within the client's timeout.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let e = find(
            &ZoneSource {
                imds_endpoint: Some(gone.clone()),
                ..ZoneSource::default()
            },
            "SYNAPSE_ZONE",
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains(&gone), "{e}");
    }
}
