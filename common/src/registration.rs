//! The registration value: what nerve writes under a key in etcd and synapse reads back.
//!
//! The wire format is SmartStack's JSON, byte-compatible with what airbnb nerve writes to
//! ZooKeeper: `{"host":"10.0.0.5","port":8080,"name":"web-01","weight":1,
//! "haproxy_server_options":"backup","labels":{"az":"a"}}`.
//!
//! Values in etcd are untrusted (anyone who can write under the prefix writes them), so
//! decoding is parse-don't-escape: the bytes are size-checked, then UTF-8-checked, then
//! decoded, then every field is turned into a type that cannot hold a dangerous value.
//! Only these types are ever rendered into HAProxy config or runtime commands; labels are
//! stored but never rendered. Errors name the field, never echo the value.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::num::NonZeroU16;
use std::str::FromStr;

use serde::Deserialize;
use serde_json::Value;

use crate::names::{validate_service_name, InstanceId, NameError};

/// Largest accepted encoded value. Checked on the byte length before any parsing.
pub const MAX_VALUE_BYTES: usize = 4096;
/// Most labels on one registration.
pub const MAX_LABELS: usize = 16;
/// Longest label key.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value.
pub const MAX_LABEL_VALUE_LEN: usize = 256;
/// HAProxy's largest server weight.
pub const MAX_WEIGHT: u16 = 256;
/// Largest `maxconn`: HAProxy keeps it in a C `int`, so a bigger value wraps negative
/// (and `haproxy -c` does not say so).
pub const MAX_MAXCONN: u32 = i32::MAX as u32;
/// Largest `rise` / `fall`. HAProxy refuses 0 and accepts any `int`; a server that needs
/// more than 1000 checks to change state is a typo.
pub const MAX_CHECK_COUNT: u16 = 1000;
/// Largest time (`inter`, `slowstart`) in milliseconds: one day, well under HAProxy's
/// own limit of 2^31-1 ms (~24.8 days).
pub const MAX_TIME_MS: u32 = 86_400_000;
/// Longest DNS name.
const MAX_DNS_LEN: usize = 253;

/// Why a value (or a key) was rejected. [`RegistrationError::reason`] is the short label
/// used for metrics (`registrations_rejected_total{reason}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationError {
    #[error("value is {len} bytes, more than the {MAX_VALUE_BYTES}-byte limit")]
    TooLarge { len: usize },
    #[error("value is not valid UTF-8")]
    InvalidUtf8,
    #[error("value is not a registration object: {0}")]
    Parse(String),
    #[error("field `{field}` is missing")]
    MissingField { field: &'static str },
    #[error("field `host` {0}")]
    InvalidHost(&'static str),
    #[error("field `host`: address {addr} is not allowed ({why})")]
    DisallowedAddress { addr: IpAddr, why: &'static str },
    #[error("field `port` must be an integer from 1 to 65535")]
    InvalidPort,
    #[error("field `name` {0}")]
    InvalidName(NameError),
    #[error("field `weight` must be an integer from 0 to {MAX_WEIGHT}")]
    InvalidWeight,
    #[error("field `haproxy_server_options`: {0}")]
    InvalidOption(String),
    #[error("field `labels`: {0}")]
    InvalidLabels(&'static str),
    #[error("value does not match its key: {0}")]
    IdentityMismatch(String),
    #[error("key is not in nerve's shape (`strict_keys`)")]
    ForeignKey,
}

impl RegistrationError {
    /// A short, stable label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } => "too_large",
            Self::InvalidUtf8 => "invalid_utf8",
            Self::Parse(_) | Self::MissingField { .. } => "parse_error",
            Self::InvalidHost(_) => "invalid_host",
            Self::DisallowedAddress { .. } => "disallowed_address",
            Self::InvalidPort => "invalid_port",
            Self::InvalidName(_) => "invalid_name",
            Self::InvalidWeight => "invalid_weight",
            Self::InvalidOption(_) => "invalid_option",
            Self::InvalidLabels(_) => "invalid_labels",
            Self::IdentityMismatch(_) => "identity_mismatch",
            Self::ForeignKey => "foreign_key",
        }
    }
}

/// A TCP port, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Port(NonZeroU16);

impl Port {
    pub fn new(port: u16) -> Option<Self> {
        NonZeroU16::new(port).map(Self)
    }

    pub fn get(self) -> u16 {
        self.0.get()
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A server weight, 0..=256 as HAProxy accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Weight(u16);

impl Weight {
    pub fn new(w: u16) -> Option<Self> {
        (w <= MAX_WEIGHT).then_some(Self(w))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where a server lives: an IP literal or a strict DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// Lower-cased, dot-separated labels of `[a-z0-9-]`, 1..=63 chars each, not
    /// starting or ending with `-`, at most 253 chars, not all-numeric.
    Dns(String),
}

impl Host {
    /// Parses an IP literal or a strict DNS name.
    pub fn parse(s: &str) -> Result<Self, RegistrationError> {
        if let Ok(ip) = IpAddr::from_str(s) {
            return Ok(Self::Ip(ip));
        }
        if s.is_empty() {
            return Err(RegistrationError::InvalidHost("must not be empty"));
        }
        if s.len() > MAX_DNS_LEN {
            return Err(RegistrationError::InvalidHost("is too long"));
        }
        let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        let labels_ok = name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        });
        if !labels_ok {
            return Err(RegistrationError::InvalidHost(
                "must be an IP address or a DNS name",
            ));
        }
        // `1.2.3` or `999.1.1.1` are not names; they are mistyped addresses.
        if name
            .split('.')
            .all(|label| label.bytes().all(|b| b.is_ascii_digit()))
        {
            return Err(RegistrationError::InvalidHost("is not a valid IP address"));
        }
        Ok(Self::Dns(name))
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Self::Ip(ip) => Some(*ip),
            Self::Dns(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ip(ip) => ip.fmt(f),
            Self::Dns(name) => f.write_str(name),
        }
    }
}

/// Which hosts a reader accepts. The contract type accepts any IP or DNS name; the
/// policy is the reader's (synapse's) choice, per service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressPolicy {
    /// Accept `127.0.0.0/8` and `::1`. On by default: single-host setups and nerve
    /// registering a host-local service both use it.
    pub allow_loopback: bool,
    /// Accept DNS names. Off by default: HAProxy resolves them only at start-up and the
    /// runtime API cannot set them, so a name in the registry is usually a mistake.
    pub allow_hostnames: bool,
}

impl Default for AddressPolicy {
    fn default() -> Self {
        Self {
            allow_loopback: true,
            allow_hostnames: false,
        }
    }
}

impl AddressPolicy {
    /// Checks a host against the policy. Unspecified, link-local (including the cloud
    /// metadata address 169.254.169.254), multicast and broadcast addresses are never
    /// accepted: no real service listens there.
    pub fn check(&self, host: &Host) -> Result<(), RegistrationError> {
        let ip = match host {
            Host::Dns(_) if self.allow_hostnames => return Ok(()),
            Host::Dns(_) => {
                return Err(RegistrationError::InvalidHost(
                    "must be an IP address (host names are not allowed by this reader)",
                ))
            }
            Host::Ip(ip) => *ip,
        };
        let deny = |why| Err(RegistrationError::DisallowedAddress { addr: ip, why });
        if ip.is_unspecified() {
            return deny("unspecified");
        }
        if ip.is_multicast() {
            return deny("multicast");
        }
        if ip.is_loopback() && !self.allow_loopback {
            return deny("loopback");
        }
        match ip {
            IpAddr::V4(v4) if v4.is_link_local() => deny("link-local"),
            IpAddr::V4(v4) if v4.is_broadcast() => deny("broadcast"),
            IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80 => deny("link-local"),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.check(&Host::Ip(IpAddr::V4(v4))),
                None => Ok(()),
            },
            IpAddr::V4(_) => Ok(()),
        }
    }
}

/// One HAProxy server keyword that a registration may ask for. The registry cannot
/// express anything else: free text never reaches haproxy.cfg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerOption {
    Backup,
    Check,
    Disabled,
    Weight(Weight),
    /// 0 (no limit) to [`MAX_MAXCONN`].
    MaxConn(u32),
    /// `inter`, in milliseconds: 1 to [`MAX_TIME_MS`] (HAProxy refuses 0).
    Inter(u32),
    /// 1 to [`MAX_CHECK_COUNT`] (HAProxy refuses 0).
    Rise(u16),
    /// 1 to [`MAX_CHECK_COUNT`] (HAProxy refuses 0).
    Fall(u16),
    /// `slowstart`, in milliseconds: 0 (off) to [`MAX_TIME_MS`].
    SlowStart(u32),
}

impl fmt::Display for ServerOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Backup => f.write_str("backup"),
            Self::Check => f.write_str("check"),
            Self::Disabled => f.write_str("disabled"),
            Self::Weight(w) => write!(f, "weight {w}"),
            Self::MaxConn(n) => write!(f, "maxconn {n}"),
            Self::Inter(ms) => write!(f, "inter {ms}ms"),
            Self::Rise(n) => write!(f, "rise {n}"),
            Self::Fall(n) => write!(f, "fall {n}"),
            Self::SlowStart(ms) => write!(f, "slowstart {ms}ms"),
        }
    }
}

/// The allow-listed server options of a registration, in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerOptions(Vec<ServerOption>);

impl ServerOptions {
    pub fn new(options: Vec<ServerOption>) -> Self {
        Self(options)
    }

    pub fn iter(&self) -> impl Iterator<Item = &ServerOption> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_backup(&self) -> bool {
        self.0.contains(&ServerOption::Backup)
    }

    /// Parses `"backup weight 5 maxconn 100"`. Any word not in the allow-list, or a
    /// missing or malformed argument, or an argument outside the range HAProxy accepts
    /// for its keyword, rejects the whole string: what this accepts, `haproxy -c` and
    /// the runtime `add server` accept too (tested against the real binary in
    /// `tests/tests/server_options.rs`).
    pub fn parse(s: &str) -> Result<Self, RegistrationError> {
        if s.bytes().any(|b| b.is_ascii_control()) {
            return Err(RegistrationError::InvalidOption(
                "contains control characters".into(),
            ));
        }
        let mut words = s.split(' ').filter(|w| !w.is_empty());
        let mut out = Vec::new();
        while let Some(word) = words.next() {
            let mut arg = |kw: &str| {
                words.next().ok_or_else(|| {
                    RegistrationError::InvalidOption(format!("`{kw}` needs an argument"))
                })
            };
            let opt = match word {
                "backup" => ServerOption::Backup,
                "check" => ServerOption::Check,
                "disabled" => ServerOption::Disabled,
                "weight" => ServerOption::Weight(
                    arg("weight")?
                        .parse::<u16>()
                        .ok()
                        .and_then(Weight::new)
                        .ok_or_else(|| bad_arg("weight"))?,
                ),
                "maxconn" => ServerOption::MaxConn(
                    arg("maxconn")?
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n <= MAX_MAXCONN)
                        .ok_or_else(|| bad_arg("maxconn"))?,
                ),
                "inter" => ServerOption::Inter(
                    parse_millis(arg("inter")?)
                        .filter(|ms| *ms >= 1)
                        .ok_or_else(|| bad_arg("inter"))?,
                ),
                "rise" => {
                    ServerOption::Rise(parse_count(arg("rise")?).ok_or_else(|| bad_arg("rise"))?)
                }
                "fall" => {
                    ServerOption::Fall(parse_count(arg("fall")?).ok_or_else(|| bad_arg("fall"))?)
                }
                "slowstart" => ServerOption::SlowStart(
                    parse_millis(arg("slowstart")?).ok_or_else(|| bad_arg("slowstart"))?,
                ),
                _ => {
                    return Err(RegistrationError::InvalidOption(
                        "only backup, check, disabled, weight, maxconn, inter, rise, fall and \
                         slowstart are allowed"
                            .into(),
                    ))
                }
            };
            out.push(opt);
        }
        Ok(Self(out))
    }
}

impl fmt::Display for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, opt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            opt.fmt(f)?;
        }
        Ok(())
    }
}

fn bad_arg(kw: &str) -> RegistrationError {
    let range = match kw {
        "weight" => "0 to 256",
        "maxconn" => "0 to 2147483647",
        "inter" => "1ms to 24h (a number with an optional unit ms, s, m or h)",
        "slowstart" => "0 to 24h (a number with an optional unit ms, s, m or h)",
        _ => "1 to 1000",
    };
    RegistrationError::InvalidOption(format!("bad argument for `{kw}`: must be {range}"))
}

fn parse_count(s: &str) -> Option<u16> {
    s.parse::<u16>()
        .ok()
        .filter(|n| (1..=MAX_CHECK_COUNT).contains(n))
}

/// HAProxy time: a number with an optional unit `ms`, `s`, `m`, `h` (default ms).
/// Returned in milliseconds, at most [`MAX_TIME_MS`].
fn parse_millis(s: &str) -> Option<u32> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "" | "ms" => n,
        "s" => n.checked_mul(1_000)?,
        "m" => n.checked_mul(60_000)?,
        "h" => n.checked_mul(3_600_000)?,
        _ => return None,
    };
    u32::try_from(ms).ok().filter(|ms| *ms <= MAX_TIME_MS)
}

/// A validated registration: every field is safe to render.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Registration {
    pub host: Host,
    pub port: Port,
    /// The instance name, e.g. nerve's `instance_id`.
    pub name: InstanceId,
    pub weight: Option<Weight>,
    pub haproxy_server_options: Option<ServerOptions>,
    /// Free-form metadata. Stored and filtered on, never rendered.
    pub labels: BTreeMap<String, String>,
}

/// The JSON shape, before validation. Every field is a raw JSON value so that each one
/// gets its own precise error; a derived struct still rejects duplicate fields, and
/// unknown fields are ignored (newer writers may add some; they are never rendered).
#[derive(Deserialize)]
struct RawRegistration {
    host: Option<Value>,
    port: Option<Value>,
    name: Option<Value>,
    weight: Option<Value>,
    haproxy_server_options: Option<Value>,
    labels: Option<Value>,
}

/// serde_json's message without the value: syntax and end-of-input errors name only the
/// problem and position, but type errors quote the value (`invalid type: string
/// "…"`), which must never reach a log line, a metric or the status.
fn parse_error(e: serde_json::Error) -> RegistrationError {
    use serde_json::error::Category;
    let at = format!("at line {} column {}", e.line(), e.column());
    RegistrationError::Parse(match e.classify() {
        Category::Syntax | Category::Eof | Category::Io => e.to_string(),
        Category::Data if e.to_string().starts_with("duplicate field") => {
            // The field name is one of ours (the derive only reports known fields).
            e.to_string()
        }
        Category::Data => format!("expected a JSON object {at}"),
    })
}

impl Registration {
    /// Decodes and validates a value read from etcd. The address policy is applied by
    /// the reader separately ([`AddressPolicy::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, RegistrationError> {
        if bytes.len() > MAX_VALUE_BYTES {
            return Err(RegistrationError::TooLarge { len: bytes.len() });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| RegistrationError::InvalidUtf8)?;
        let raw: RawRegistration = serde_json::from_str(text).map_err(parse_error)?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawRegistration) -> Result<Self, RegistrationError> {
        let host = match raw.host {
            Some(Value::String(s)) => Host::parse(&s)?,
            Some(_) => return Err(RegistrationError::InvalidHost("must be a string")),
            None => return Err(RegistrationError::MissingField { field: "host" }),
        };
        let port = match raw.port {
            Some(v) => v
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .and_then(Port::new)
                .ok_or(RegistrationError::InvalidPort)?,
            None => return Err(RegistrationError::MissingField { field: "port" }),
        };
        let name = match raw.name {
            Some(Value::String(s)) => InstanceId::new(s).map_err(RegistrationError::InvalidName)?,
            Some(_) => return Err(RegistrationError::InvalidName(NameError::BadChar)),
            None => return Err(RegistrationError::MissingField { field: "name" }),
        };
        let weight = match raw.weight {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|w| u16::try_from(w).ok())
                    .and_then(Weight::new)
                    .ok_or(RegistrationError::InvalidWeight)?,
            ),
        };
        let haproxy_server_options = match raw.haproxy_server_options {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(ServerOptions::parse(&s)?),
            Some(_) => return Err(RegistrationError::InvalidOption("must be a string".into())),
        };
        let labels = match raw.labels {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(Value::Object(map)) => {
                let mut labels = BTreeMap::new();
                for (k, v) in map {
                    let Value::String(v) = v else {
                        return Err(RegistrationError::InvalidLabels("values must be strings"));
                    };
                    labels.insert(k, v);
                }
                validate_labels(&labels)?;
                labels
            }
            Some(_) => return Err(RegistrationError::InvalidLabels("must be an object")),
        };
        Ok(Self {
            host,
            port,
            name,
            weight,
            haproxy_server_options,
            labels,
        })
    }

    /// Encodes the compact SmartStack JSON, fields in nerve's order. Optional fields are
    /// left out when unset.
    pub fn encode(&self) -> String {
        #[derive(serde::Serialize)]
        struct Wire<'a> {
            host: String,
            port: u16,
            name: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            weight: Option<u16>,
            #[serde(skip_serializing_if = "Option::is_none")]
            haproxy_server_options: Option<String>,
            #[serde(skip_serializing_if = "BTreeMap::is_empty")]
            labels: &'a BTreeMap<String, String>,
        }
        let wire = Wire {
            host: self.host.to_string(),
            port: self.port.get(),
            name: self.name.as_str(),
            weight: self.weight.map(Weight::get),
            haproxy_server_options: self
                .haproxy_server_options
                .as_ref()
                .map(ToString::to_string),
            labels: &self.labels,
        };
        serde_json::to_string(&wire).unwrap_or_default()
    }

    /// The HAProxy server name SmartStack derives: `<name>_<host>:<port>`. Built only
    /// from validated parts, so it stays within HAProxy's name charset.
    pub fn server_name(&self) -> String {
        format!("{}_{}:{}", self.name, self.host, self.port)
    }
}

/// Checks label bounds. Label keys follow the name grammar plus `/` (for
/// `example.com/role`-style keys); values may hold any text, as they are never rendered.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), RegistrationError> {
    if labels.len() > MAX_LABELS {
        return Err(RegistrationError::InvalidLabels("too many labels"));
    }
    for (k, v) in labels {
        if k.len() > MAX_LABEL_KEY_LEN
            || k.split('/')
                .any(|part| validate_service_name(part).is_err())
        {
            return Err(RegistrationError::InvalidLabels(
                "keys must be names of letters, digits, '_', '.', '-', ':' (and '/')",
            ));
        }
        if v.len() > MAX_LABEL_VALUE_LEN {
            return Err(RegistrationError::InvalidLabels("a value is too long"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
