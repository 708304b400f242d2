//! Integration tests.

mod load;
mod sim;
