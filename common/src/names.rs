//! Names that end up in etcd keys and HAProxy config: service names and instance ids.
//!
//! Both use one grammar, `^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`: a strict subset of the
//! characters HAProxy allows in names, with nothing that HAProxy's config language, its
//! runtime API or a shell treats specially (no `#`, `$`, quotes, `;`, `/`, `:`,
//! whitespace), and no leading `.` or `-` (so a name can never start an `.if` block or
//! look like a flag).
//!
//! Service names (and etcd path segments and label keys, which upstream tools build from
//! them) may also contain `:` after the first character, as Yelp's generated configs
//! write them (`svc.region:10.0.0.1.1234.v2.new`). A service name never reaches
//! HAProxy as it is: synapse renders it through [`haproxy_name`].

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest name accepted.
pub const MAX_NAME_LEN: usize = 63;

/// Why a name was rejected. Never carries the rejected text itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("must start with a letter or digit")]
    BadFirst,
    #[error("may contain only letters, digits, '_', '.' and '-'")]
    BadChar,
    #[error("may contain only letters, digits, '_', '.', '-' and ':'")]
    BadServiceChar,
}

/// Checks `s` against the name grammar.
pub fn validate_name(s: &str) -> Result<(), NameError> {
    validate(s, false)
}

/// Checks `s` against the service-name grammar: the name grammar plus `:` after the
/// first character.
pub fn validate_service_name(s: &str) -> Result<(), NameError> {
    validate(s, true)
}

/// The name HAProxy sees for a service name: `:` becomes `_`, the rest is kept. Two
/// service names that map to the same name are a config error (synapse checks it).
pub fn haproxy_name(service: &str) -> std::borrow::Cow<'_, str> {
    if service.contains(':') {
        std::borrow::Cow::Owned(service.replace(':', "_"))
    } else {
        std::borrow::Cow::Borrowed(service)
    }
}

fn validate(s: &str, colon: bool) -> Result<(), NameError> {
    let bytes = s.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(NameError::Empty);
    };
    if bytes.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if !first.is_ascii_alphanumeric() {
        return Err(NameError::BadFirst);
    }
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-');
    if !bytes.iter().all(|b| ok(b) || (colon && *b == b':')) {
        return Err(if colon {
            NameError::BadServiceChar
        } else {
            NameError::BadChar
        });
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $validate:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` against the name grammar.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                $validate(&s)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let s = String::deserialize(deserializer)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

name_type!(
    /// The name of a service, e.g. `web`: a key in both daemons' `services` maps.
    ServiceName,
    validate_service_name
);
name_type!(
    /// The identity of one nerve (usually the host name), e.g. `web-01.example`.
    InstanceId,
    validate_name
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["web", "a", "web-01", "web_1.prod", "0abc", &"x".repeat(63)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn rejects_each_class_of_bad_name() {
        assert_eq!(validate_name(""), Err(NameError::Empty));
        assert_eq!(validate_name(&"x".repeat(64)), Err(NameError::TooLong));
        assert_eq!(validate_name(".if"), Err(NameError::BadFirst));
        assert_eq!(validate_name(" web"), Err(NameError::BadFirst));
        assert_eq!(validate_name("-v"), Err(NameError::BadFirst));
        for bad in [
            "web#1", "web 1", "a;b", "a\"b", "a\\b", "${HOME}", "a/b", "a:b", "a\nb", "wéb",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(validate_name("$HAPROXY_CLI"), Err(NameError::BadFirst));
    }

    #[test]
    fn service_names_may_hold_colons_and_map_to_haproxy_names() {
        let yelp = "test_service.my_superregion:10.0.0.1.1234.v2.new";
        assert_eq!(validate_service_name(yelp), Ok(()));
        assert!(ServiceName::new(yelp).is_ok());
        assert!(InstanceId::new("a:b").is_err());
        assert_eq!(validate_service_name(":a"), Err(NameError::BadFirst));
        assert_eq!(validate_service_name("a b"), Err(NameError::BadServiceChar));
        assert_eq!(
            haproxy_name(yelp),
            "test_service.my_superregion_10.0.0.1.1234.v2.new"
        );
        assert!(matches!(
            haproxy_name("web"),
            std::borrow::Cow::Borrowed("web")
        ));
    }

    #[test]
    fn serde_validates() {
        let ok: ServiceName = serde_json::from_str("\"web\"").unwrap();
        assert_eq!(ok.as_str(), "web");
        assert!(serde_json::from_str::<ServiceName>("\"we b\"").is_err());
    }
}
