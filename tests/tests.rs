//! The one integration-test binary (see STYLE: one binary, helper modules).

mod common;
mod experiment;
