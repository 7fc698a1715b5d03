//! Errors for logs: an error and its sources on one line. Its own module (not `lib.rs`)
//! so that the low layers that log errors do not import the top one; the function is
//! the one synapse uses too (`common::error`).

pub(crate) use common::error::error_chain;
