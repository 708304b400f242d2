//! Matrix expansion.
