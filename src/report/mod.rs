//! Placeholder: replaced by the report module.
