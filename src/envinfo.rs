//! Placeholder: replaced by environment capture.
