//! Placeholder: replaced by the server lifecycle module.
