//! nerve (in progress).
