//! Shared helpers for the example programs.

pub mod dump;
pub mod fields;
