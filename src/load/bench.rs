//! The client benchmark (being built).
