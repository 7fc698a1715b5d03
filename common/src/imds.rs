//! A small EC2 instance metadata (IMDSv2) client: a session token by `PUT`, then `GET`s
//! that carry it. No redirects, a short timeout, bodies read with a cap: IMDS is
//! link-local, fast and small, and anything else answering there is not IMDS.

use std::time::Duration;

use crate::error::error_chain;

/// The IMDS address on EC2. Tests and non-AWS clouds point the endpoint elsewhere.
pub const DEFAULT_ENDPOINT: &str = "http://169.254.169.254";
/// What the AWS SDKs read to point at another IMDS; honoured the same way here.
pub const ENDPOINT_ENV: &str = "AWS_EC2_METADATA_SERVICE_ENDPOINT";
/// IMDS answers within milliseconds on EC2; anything slower is not there.
const TIMEOUT: Duration = Duration::from_secs(2);
const TOKEN_TTL_SECS: u32 = 21_600;
/// IMDS answers are small: a token, a zone, a role name, a credentials document.
const MAX_BODY: usize = 64 * 1024;

/// Why an IMDS request failed (the endpoint is in the message; never a token).
#[derive(Debug, thiserror::Error)]
#[error("IMDS at {endpoint}: {what}: {message}")]
pub struct ImdsError {
    pub endpoint: String,
    pub what: String,
    pub message: String,
}

/// An IMDSv2 client for one endpoint.
#[derive(Debug, Clone)]
pub struct Imds {
    http: reqwest::Client,
    endpoint: String,
}

impl Imds {
    /// A client for `endpoint` (`http://169.254.169.254` on EC2), without a trailing `/`.
    pub fn new(endpoint: &str) -> Result<Self, ImdsError> {
        let endpoint = endpoint.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .timeout(TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            // Never through an HTTP(S)_PROXY: IMDS is link-local, and a proxy would see
            // the token and the role's credentials.
            .no_proxy()
            .build()
            .map_err(|e| ImdsError {
                endpoint: endpoint.clone(),
                what: "client".into(),
                message: e.to_string(),
            })?;
        Ok(Self { http, endpoint })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A session token (`PUT /latest/api/token`).
    pub async fn token(&self) -> Result<String, ImdsError> {
        let resp = self
            .http
            .put(format!("{}/latest/api/token", self.endpoint))
            .header(
                "X-aws-ec2-metadata-token-ttl-seconds",
                TOKEN_TTL_SECS.to_string(),
            )
            .send()
            .await;
        Ok(self.body("token", resp).await?.trim().to_owned())
    }

    /// The body of `GET <path>` with `token`, e.g.
    /// `/latest/meta-data/placement/availability-zone`.
    pub async fn get(&self, token: &str, path: &str) -> Result<String, ImdsError> {
        let resp = self
            .http
            .get(format!("{}{path}", self.endpoint))
            .header("X-aws-ec2-metadata-token", token)
            .send()
            .await;
        self.body(path, resp).await
    }

    /// The body of a 2xx answer, capped; a redirect or any other status is an error.
    async fn body(
        &self,
        what: &str,
        resp: Result<reqwest::Response, reqwest::Error>,
    ) -> Result<String, ImdsError> {
        let err = |message: String| ImdsError {
            endpoint: self.endpoint.clone(),
            what: what.to_owned(),
            message,
        };
        let mut resp = resp.map_err(|e| err(error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(err(format!(
                "HTTP {} (redirects are not followed)",
                status.as_u16()
            )));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| err(error_chain(&e)))? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(err(format!("the answer is larger than {MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}
