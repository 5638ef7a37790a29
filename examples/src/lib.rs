//! Shared helpers for the example programs.

pub mod api;
pub mod dump;
pub mod fields;
