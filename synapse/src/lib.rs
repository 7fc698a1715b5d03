//! synapse (in progress).
