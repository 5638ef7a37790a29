//! A pure AMQP 0-9-1 routing engine. Under construction.
//!
//! ```
//! assert_eq!(amqp_router::types::ReplyCode::NOT_FOUND.0, 404);
//! ```

#![forbid(unsafe_code)]

/// The vocabulary this crate builds on.
pub use amqp_types as types;
