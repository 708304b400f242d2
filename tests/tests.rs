//! Integration tests.

mod server;
mod sim;
