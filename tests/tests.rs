//! Integration tests.

mod sim;
