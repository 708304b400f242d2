//! The experiment file.
