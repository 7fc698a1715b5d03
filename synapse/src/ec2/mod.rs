//! The EC2 side of the `ec2tag` discovery: credentials (config, environment, shared
//! credentials file, instance role through IMDSv2) and `DescribeInstances` — SigV4
//! signed, paginated, parsed from XML — for running instances that carry a tag.
//!
//! Everything here is I/O at the edge; the values it returns go through the same
//! validation as registrations from etcd before they reach HAProxy.

pub mod api;
pub mod credentials;
mod xml;

pub use api::{Ec2Api, Ec2Error, Instance};
pub use credentials::{CredentialError, CredentialProvider, Credentials};
