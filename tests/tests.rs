//! Integration tests.

mod server;
