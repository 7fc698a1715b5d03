//! Names that end up in etcd keys and HAProxy config: service names and instance ids.
//!
//! Both use one grammar, `^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`: a strict subset of the
//! characters HAProxy allows in names, with nothing that HAProxy's config language, its
//! runtime API or a shell treats specially (no `#`, `$`, quotes, `;`, `/`, `:`,
//! whitespace), and no leading `.` or `-` (so a name can never start an `.if` block or
//! look like a flag).

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
}

/// Checks `s` against the name grammar.
pub fn validate_name(s: &str) -> Result<(), NameError> {
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
    if !bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(NameError::BadChar);
    }
    Ok(())
}

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates `s` against the name grammar.
            pub fn new(s: impl Into<String>) -> Result<Self, NameError> {
                let s = s.into();
                validate_name(&s)?;
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
    ServiceName
);
name_type!(
    /// The identity of one nerve (usually the host name), e.g. `web-01.example`.
    InstanceId
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
    fn serde_validates() {
        let ok: ServiceName = serde_json::from_str("\"web\"").unwrap();
        assert_eq!(ok.as_str(), "web");
        assert!(serde_json::from_str::<ServiceName>("\"we b\"").is_err());
    }
}
