//! `DescribeInstances` for running instances with a tag: SigV4-signed Query API POSTs,
//! following `NextToken` until the last page. A failure on any page fails the whole
//! call, so callers never see a partial set.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials as AwsCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;

use super::credentials::{CredentialError, CredentialProvider};
use super::xml::{parse_describe_instances, parse_error, RawInstance};

/// The EC2 API version this client speaks.
const API_VERSION: &str = "2016-11-15";
/// Upper bound on pages followed in one listing (at 1000 instances a page).
const MAX_PAGES: usize = 100;
/// Largest response body read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// One running instance carrying the tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub private_ip: Option<String>,
    pub private_dns: Option<String>,
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
pub enum Ec2Error {
    #[error("no AWS credentials")]
    Credentials(#[from] CredentialError),
    #[error("request to EC2 failed")]
    Transport(#[source] reqwest::Error),
    #[error("EC2 answered HTTP {status}: {code}")]
    Api { status: u16, code: String },
    #[error("EC2 is throttling requests ({code})")]
    Throttled { code: String },
    #[error("EC2 response was not understood: {0}")]
    Malformed(String),
    #[error("cannot sign the request: {0}")]
    Signing(String),
    #[error("more than {MAX_PAGES} pages of instances")]
    TooManyPages,
    #[error("the EC2 endpoint must be https:// unless it is loopback")]
    InsecureEndpoint,
    #[error("EC2 redirected the request (HTTP {0}); redirects are not followed")]
    Redirected(u16),
    #[error("EC2 response unreadable")]
    Body(#[from] super::BodyError),
}

impl Ec2Error {
    /// Credentials EC2 refused as expired or invalid: worth fetching new ones.
    pub fn is_auth(&self) -> bool {
        matches!(self, Self::Api { code, .. } if code.contains("Expired") || code.starts_with("AuthFailure") || code.contains("InvalidClientTokenId"))
    }
}

/// A client for the EC2 Query API in one region.
#[derive(Debug)]
pub struct Ec2Api {
    http: reqwest::Client,
    endpoint: String,
    region: String,
    credentials: CredentialProvider,
}

impl Ec2Api {
    /// `endpoint` defaults to `https://ec2.<region>.amazonaws.com`.
    pub fn new(
        region: String,
        endpoint: Option<String>,
        credentials: CredentialProvider,
        timeout: Duration,
    ) -> Result<Self, Ec2Error> {
        let endpoint = endpoint
            .unwrap_or_else(|| format!("https://ec2.{region}.amazonaws.com"))
            .trim_end_matches('/')
            .to_owned();
        if endpoint.starts_with("http://") && !common::etcd::is_loopback_url(&endpoint) {
            return Err(Ec2Error::InsecureEndpoint);
        }
        let http = super::client_builder(timeout)
            .build()
            .map_err(Ec2Error::Transport)?;
        Ok(Self {
            http,
            endpoint: format!("{endpoint}/"),
            region,
            credentials,
        })
    }

    /// All running instances whose tag `tag_name` equals `tag_value`, in EC2's order.
    pub async fn running_instances_with_tag(
        &self,
        tag_name: &str,
        tag_value: &str,
    ) -> Result<Vec<Instance>, Ec2Error> {
        let result = self.list(tag_name, tag_value).await;
        if let Err(e) = &result {
            if e.is_auth() {
                self.credentials.invalidate().await;
            }
        }
        result
    }

    async fn list(&self, tag_name: &str, tag_value: &str) -> Result<Vec<Instance>, Ec2Error> {
        let mut instances = Vec::new();
        let mut token: Option<String> = None;
        for _ in 0..MAX_PAGES {
            let mut form = vec![
                ("Action", "DescribeInstances".to_owned()),
                ("Version", API_VERSION.to_owned()),
                ("Filter.1.Name", format!("tag:{tag_name}")),
                ("Filter.1.Value.1", tag_value.to_owned()),
                ("Filter.2.Name", "instance-state-name".to_owned()),
                ("Filter.2.Value.1", "running".to_owned()),
                ("MaxResults", "1000".to_owned()),
            ];
            if let Some(t) = &token {
                form.push(("NextToken", t.clone()));
            }
            let body = encode_form(&form);
            let xml = self.post(body).await?;
            let page = parse_describe_instances(&xml).map_err(Ec2Error::Malformed)?;
            instances.extend(
                page.instances
                    .into_iter()
                    // The filter already asks for running ones; a stale answer is
                    // checked again rather than trusted.
                    .filter(|i| i.state.as_deref() == Some("running"))
                    .map(
                        |RawInstance {
                             id,
                             private_ip,
                             private_dns,
                             ..
                         }| Instance {
                            id,
                            private_ip,
                            private_dns,
                        },
                    ),
            );
            match page.next_token {
                Some(t) => token = Some(t),
                None => return Ok(instances),
            }
        }
        Err(Ec2Error::TooManyPages)
    }

    async fn post(&self, body: String) -> Result<String, Ec2Error> {
        let creds = self.credentials.get().await?;
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let identity = AwsCredentials::new(
            creds.access_key_id.clone(),
            creds.secret_access_key.expose().to_owned(),
            creds.session_token.as_ref().map(|t| t.expose().to_owned()),
            creds.expires,
            "synapse",
        )
        .into();
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(&self.region)
            .name("ec2")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| Ec2Error::Signing(e.to_string()))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &self.endpoint,
            [("content-type", content_type)].into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| Ec2Error::Signing(e.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| Ec2Error::Signing(e.to_string()))?
            .into_parts();
        let mut req = self
            .http
            .post(&self.endpoint)
            .header("content-type", content_type);
        for (name, value) in instructions.headers() {
            req = req.header(name, value);
        }
        let resp = req.body(body).send().await.map_err(Ec2Error::Transport)?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(Ec2Error::Redirected(status.as_u16()));
        }
        let text = super::read_capped(resp, MAX_BODY).await?;
        if status.is_success() {
            return Ok(text);
        }
        let code = parse_error(&text)
            .map(|e| super::printable(&e.code))
            .unwrap_or_default();
        if status.as_u16() == 503 || code == "RequestLimitExceeded" || code == "Throttling" {
            return Err(Ec2Error::Throttled {
                code: if code.is_empty() {
                    status.to_string()
                } else {
                    code
                },
            });
        }
        Err(Ec2Error::Api {
            status: status.as_u16(),
            code: if code.is_empty() {
                "unknown".into()
            } else {
                code
            },
        })
    }
}

/// `application/x-www-form-urlencoded` per the AWS Query API (RFC 3986 unreserved set).
fn encode_form(pairs: &[(&str, String)]) -> String {
    fn enc(s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ec2::credentials::Credentials;
    use crate::ec2::test_server::server;
    use std::sync::atomic::Ordering;

    fn api(endpoint: &str) -> Result<Ec2Api, Ec2Error> {
        Ec2Api::new(
            "us-east-1".into(),
            Some(endpoint.to_owned()),
            CredentialProvider::fixed(Credentials {
                access_key_id: "AKIDTEST".into(),
                secret_access_key: common::Secret::new("secret"),
                session_token: None,
                expires: None,
            }),
            Duration::from_secs(10),
        )
    }

    /// What listing through `endpoint` fails with.
    async fn list_error(endpoint: &str) -> Ec2Error {
        api(endpoint)
            .unwrap()
            .running_instances_with_tag("a", "b")
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let (elsewhere, hits) =
            server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".into(), 0).await;
        let (endpoint, _) = server(
            format!("HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}/\r\nContent-Length: 0\r\n\r\n"),
            0,
        )
        .await;
        let err = list_error(&endpoint).await;
        assert!(matches!(err, Ec2Error::Redirected(307)), "{err:?}");
        assert_eq!(hits.load(Ordering::SeqCst), 0, "the redirect was followed");
    }

    #[tokio::test]
    async fn bodies_are_capped_whatever_the_headers_say() {
        // No Content-Length: the body ends when the connection closes.
        let (endpoint, _) = server(
            "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".into(),
            MAX_BODY + 64 * 1024,
        )
        .await;
        let err = list_error(&endpoint).await;
        assert!(
            matches!(err, Ec2Error::Body(crate::ec2::BodyError::TooLarge(_))),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn error_codes_are_escaped_and_truncated() {
        let code = format!("Evil\u{1b}[31m\r\ninjected{}", "A".repeat(500));
        let body =
            format!("<Response><Errors><Error><Code>{code}</Code></Error></Errors></Response>");
        let (endpoint, _) = server(
            format!(
                "HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
            0,
        )
        .await;
        let err = list_error(&endpoint).await;
        let Ec2Error::Api { code, .. } = &err else {
            panic!("{err:?}")
        };
        assert!(code.len() < 200, "{code}");
        assert!(!code.chars().any(char::is_control), "{code:?}");
        assert!(code.starts_with("Evil\\u{1b}[31m\\r\\n"), "{code}");
    }

    #[test]
    fn the_endpoint_is_https_unless_loopback() {
        assert!(matches!(
            api("http://ec2.example.com"),
            Err(Ec2Error::InsecureEndpoint)
        ));
        assert!(api("https://ec2.example.com").is_ok());
        assert!(api("http://127.0.0.1:5000").is_ok());
    }

    #[test]
    fn form_encoding() {
        assert_eq!(
            encode_form(&[
                ("Filter.1.Name", "tag:servicename".into()),
                ("V", "a b&c=d/é".into())
            ]),
            "Filter.1.Name=tag%3Aservicename&V=a%20b%26c%3Dd%2F%C3%A9"
        );
    }
}
