//! The load generator. (Being built.)
