//! The etcd key schema.
//!
//! Each service has a directory, its *service path* (nerve's `etcd_path`, synapse's
//! discovery `path`; by default `/nerve/services/<service>`). nerve writes one key per
//! registered service under it:
//!
//! ```text
//! <service path>/<instance_id>/<nerve service name>_<lease id, 16 lower-case hex digits>
//! /nerve/services/web/web-01/web_694d7a1b2c3d4e5f
//! ```
//!
//! The instance id sits at a path boundary, so etcd RBAC can give each host write access
//! to `<service path>/<its instance id>/` only. The nerve service name keeps two entries
//! of one nerve that share a path (two ports of one app) apart. The lease id makes the key
//! unique per nerve *process*: two nerves with the same `instance_id` (a hitless nerve
//! restart, a copy-pasted config) write different keys, so neither can delete the
//! other's registration.
//!
//! Readers accept a valid registration under *any* key below the service path (other
//! tools and older nerves write their own shapes); only keys in nerve's own shape get
//! the key/value identity check.

use std::fmt;

use crate::names::{validate_service_name, InstanceId, NameError, ServiceName};
use crate::registration::{Registration, RegistrationError};

/// Longest accepted service path.
const MAX_PATH_LEN: usize = 512;

/// Why a key or a service path was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("service path must start with '/'")]
    NotAbsolute,
    #[error("service path must not be '/' alone or end with '/'")]
    TrailingSlash,
    #[error("service path is longer than {MAX_PATH_LEN} bytes")]
    TooLong,
    #[error("service path segment {index}: {source}")]
    BadSegment {
        index: usize,
        #[source]
        source: NameError,
    },
    #[error("key is not valid UTF-8")]
    InvalidUtf8,
    #[error("key is not below the service path")]
    OutsidePrefix,
}

/// A service's directory in etcd, e.g. `/nerve/services/web`. Stored without a trailing
/// slash; [`ServicePath::dir`] gives the watch prefix, which always ends in `/` so that
/// `/svc/web` never matches `/svc/web2/…`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePath(String);

impl ServicePath {
    /// Validates a path: absolute, segments in the name grammar (SmartStack paths like
    /// `/nerve/services/web/services` pass). A single trailing `/` is tolerated and
    /// dropped, as users write both forms.
    pub fn new(path: &str) -> Result<Self, KeyError> {
        let Some(rest) = path.strip_prefix('/') else {
            return Err(KeyError::NotAbsolute);
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.ends_with('/') {
            return Err(KeyError::TrailingSlash);
        }
        if path.len() > MAX_PATH_LEN {
            return Err(KeyError::TooLong);
        }
        for (index, segment) in rest.split('/').enumerate() {
            validate_service_name(segment)
                .map_err(|source| KeyError::BadSegment { index, source })?;
        }
        Ok(Self(format!("/{rest}")))
    }

    /// `<prefix>/<service>`, e.g. `ServicePath::join("/nerve/services", "web")`.
    pub fn join(prefix: &str, service: &str) -> Result<Self, KeyError> {
        Self::new(&format!("{}/{service}", prefix.trim_end_matches('/')))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The watch/list prefix: the path with a trailing `/`.
    pub fn dir(&self) -> String {
        format!("{}/", self.0)
    }

    /// nerve's key for its service `service` of `instance`, registered under `lease_id`.
    pub fn nerve_key(&self, instance: &InstanceId, service: &ServiceName, lease_id: i64) -> String {
        NerveKey {
            instance_id: instance.clone(),
            service: service.clone(),
            lease_id,
        }
        .under(self)
    }

    /// Classifies a key read from etcd.
    pub fn parse_key(&self, key: &[u8]) -> Result<ParsedKey, KeyError> {
        let key = std::str::from_utf8(key).map_err(|_| KeyError::InvalidUtf8)?;
        let rest = key
            .strip_prefix(self.0.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .filter(|r| !r.is_empty())
            .ok_or(KeyError::OutsidePrefix)?;
        Ok(match NerveKey::parse(rest) {
            Some(k) => ParsedKey::Nerve(k),
            None => ParsedKey::Foreign(rest.to_owned()),
        })
    }
}

impl fmt::Display for ServicePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The part of a nerve key after the service path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NerveKey {
    pub instance_id: InstanceId,
    /// The name of the service in the writing nerve's config.
    pub service: ServiceName,
    pub lease_id: i64,
}

impl NerveKey {
    /// The full key below `path`.
    pub fn under(&self, path: &ServicePath) -> String {
        format!(
            "{path}/{}/{}_{:016x}",
            self.instance_id, self.service, self.lease_id
        )
    }

    /// Parses `<instance_id>/<service>_<16 hex digits>`; `None` for another shape.
    fn parse(rest: &str) -> Option<Self> {
        let (instance, last) = rest.split_once('/')?;
        let (service, lease) = last.rsplit_once('_')?;
        if lease.len() != 16
            || !lease
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let lease_id = u64::from_str_radix(lease, 16).ok()? as i64;
        let instance_id = InstanceId::new(instance).ok()?;
        let service = ServiceName::new(service).ok()?;
        Some(Self {
            instance_id,
            service,
            lease_id,
        })
    }

    /// The key/value identity check (reliability B18): a registration under a nerve key
    /// must carry that key's instance id as its `name`.
    pub fn check_identity(&self, reg: &Registration) -> Result<(), RegistrationError> {
        if reg.name == self.instance_id {
            Ok(())
        } else {
            Err(RegistrationError::IdentityMismatch(
                "`name` differs from the instance id in the key".into(),
            ))
        }
    }
}

/// A key below a service path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParsedKey {
    /// Written by nerve.
    Nerve(NerveKey),
    /// Written by something else; the registration is taken on its own merits.
    Foreign(String),
}

impl ParsedKey {
    /// The instance id the key vouches for: nerve's, or the first segment of a foreign
    /// key of two or more segments when that segment is a valid instance id
    /// (`<instance>/anything`). A one-segment foreign key vouches for nothing.
    pub fn claimed_instance(&self) -> Option<InstanceId> {
        match self {
            Self::Nerve(k) => Some(k.instance_id.clone()),
            Self::Foreign(rest) => rest
                .split_once('/')
                .and_then(|(first, _)| InstanceId::new(first).ok()),
        }
    }

    /// Applies the identity check where the key shape allows one: a key that names an
    /// instance ([`claimed_instance`](Self::claimed_instance)) must carry a value whose
    /// `name` is that instance, whatever the rest of the key looks like.
    pub fn check_identity(&self, reg: &Registration) -> Result<(), RegistrationError> {
        match (self, self.claimed_instance()) {
            (Self::Nerve(k), _) => k.check_identity(reg),
            (Self::Foreign(_), Some(id)) if id != reg.name => {
                Err(RegistrationError::IdentityMismatch(
                    "`name` differs from the instance id the key starts with".into(),
                ))
            }
            (Self::Foreign(_), _) => Ok(()),
        }
    }

    /// Whether the identity check applied to this key.
    pub fn is_identity_checked(&self) -> bool {
        self.claimed_instance().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn path(s: &str) -> ServicePath {
        ServicePath::new(s).unwrap()
    }

    fn nerve(instance: &str, service: &str, lease_id: i64) -> ParsedKey {
        ParsedKey::Nerve(NerveKey {
            instance_id: InstanceId::new(instance).unwrap(),
            service: ServiceName::new(service).unwrap(),
            lease_id,
        })
    }

    #[test]
    fn a_key_starting_with_an_instance_id_must_match_the_name() {
        let web = path("/svc/web");
        let reg = |name: &str| {
            Registration::decode(
                format!(r#"{{"host":"10.0.0.1","port":80,"name":"{name}"}}"#).as_bytes(),
            )
            .unwrap()
        };
        // Foreign shape, first segment an instance id: checked.
        let k = web.parse_key(b"/svc/web/host-a/whatever").unwrap();
        assert!(matches!(k, ParsedKey::Foreign(_)));
        assert!(k.is_identity_checked());
        assert!(k.check_identity(&reg("host-a")).is_ok());
        assert_eq!(
            k.check_identity(&reg("host-b")).unwrap_err().reason(),
            "identity_mismatch"
        );
        // One segment: vouches for nothing (SmartStack writers' own key shapes).
        let k = web.parse_key(b"/svc/web/host-a").unwrap();
        assert!(!k.is_identity_checked());
        assert!(k.check_identity(&reg("host-b")).is_ok());
    }

    #[test]
    fn golden_keys() {
        let web = path("/nerve/services/web");
        let id = InstanceId::new("web-01").unwrap();
        let svc = ServiceName::new("web").unwrap();
        assert_eq!(
            web.nerve_key(&id, &svc, 0x694d_7a1b_2c3d_4e5f),
            "/nerve/services/web/web-01/web_694d7a1b2c3d4e5f"
        );
        assert_eq!(
            web.nerve_key(&id, &svc, 1),
            "/nerve/services/web/web-01/web_0000000000000001"
        );
        assert_eq!(web.dir(), "/nerve/services/web/");
        assert_eq!(
            web.parse_key(b"/nerve/services/web/web-01/web_694d7a1b2c3d4e5f"),
            Ok(nerve("web-01", "web", 0x694d_7a1b_2c3d_4e5f))
        );
        // Service names may contain '_': the lease is the last segment.
        assert_eq!(
            web.parse_key(b"/nerve/services/web/host_a/web_8080_0000000000000002"),
            Ok(nerve("host_a", "web_8080", 2))
        );
        // Negative lease ids (etcd never hands them out) still round-trip.
        assert_eq!(
            web.parse_key(web.nerve_key(&id, &svc, -1).as_bytes()),
            Ok(nerve("web-01", "web", -1))
        );
    }

    #[test]
    fn paths_are_normalised_and_validated() {
        assert_eq!(path("/nerve/services/web/").as_str(), "/nerve/services/web");
        assert_eq!(
            ServicePath::join("/nerve/services/", "web"),
            Ok(path("/nerve/services/web"))
        );
        assert_eq!(ServicePath::new("nerve/web"), Err(KeyError::NotAbsolute));
        assert_eq!(ServicePath::new("/"), Err(KeyError::TrailingSlash));
        assert_eq!(ServicePath::new("/a//"), Err(KeyError::TrailingSlash));
        assert!(matches!(
            ServicePath::new("/a//b"),
            Err(KeyError::BadSegment { index: 1, .. })
        ));
        assert!(matches!(
            ServicePath::new("/a/b c"),
            Err(KeyError::BadSegment { index: 1, .. })
        ));
        assert!(matches!(
            ServicePath::new("/a/.."),
            Err(KeyError::BadSegment { .. })
        ));
    }

    #[test]
    fn foreign_keys_are_accepted_below_the_path() {
        let web = path("/svc/web");
        // Older nerve etcd reporters nested keys as <instance>/<index>; other tools pick
        // any name.
        assert_eq!(
            web.parse_key(b"/svc/web/host-a/0001"),
            Ok(ParsedKey::Foreign("host-a/0001".into()))
        );
        for rest in [
            "x_0123456789abcdef",
            "a/b_123",
            "a/b_0123456789ABCDEF",
            "a/b/c_0123456789abcdef",
        ] {
            assert_eq!(
                web.parse_key(format!("/svc/web/{rest}").as_bytes()),
                Ok(ParsedKey::Foreign(rest.into())),
                "{rest}"
            );
        }
    }

    #[test]
    fn b17_keys_outside_the_prefix() {
        let web = path("/nerve/v1/services/web");
        for key in [
            "/nerve/v1/services/web2/a/web_0000000000000001",
            "/nerve/v1/services/web",
            "/nerve/v1/services/web/",
            "/other/a",
        ] {
            assert_eq!(
                web.parse_key(key.as_bytes()),
                Err(KeyError::OutsidePrefix),
                "{key}"
            );
        }
        assert_eq!(web.parse_key(&[b'/', 0xff]), Err(KeyError::InvalidUtf8));
    }

    #[test]
    fn b18_identity_mismatch() {
        let web = path("/svc/web");
        let key = web
            .parse_key(b"/svc/web/hostA/web_0000000000000001")
            .unwrap();
        let api = Registration::decode(br#"{"host":"10.0.0.1","port":80,"name":"api"}"#).unwrap();
        assert_eq!(
            key.check_identity(&api).unwrap_err().reason(),
            "identity_mismatch"
        );
        let host_a =
            Registration::decode(br#"{"host":"10.0.0.1","port":80,"name":"hostA"}"#).unwrap();
        assert_eq!(key.check_identity(&host_a), Ok(()));
        let foreign = web.parse_key(b"/svc/web/whatever").unwrap();
        assert_eq!(foreign.check_identity(&api), Ok(()));
    }

    proptest! {
        #[test]
        fn nerve_keys_round_trip(
            segs in proptest::collection::vec("[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", 1..4),
            instance in "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
            service in "[A-Za-z0-9][A-Za-z0-9_.-]{0,62}",
            lease in any::<i64>(),
        ) {
            let p = ServicePath::new(&format!("/{}", segs.join("/"))).unwrap();
            let id = InstanceId::new(instance).unwrap();
            let svc = ServiceName::new(service).unwrap();
            let key = p.nerve_key(&id, &svc, lease);
            prop_assert!(key.starts_with(&p.dir()));
            prop_assert_eq!(
                p.parse_key(key.as_bytes()),
                Ok(ParsedKey::Nerve(NerveKey { instance_id: id, service: svc, lease_id: lease }))
            );
        }

        #[test]
        fn parse_key_never_panics(key in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = path("/svc/web").parse_key(&key);
        }
    }
}
