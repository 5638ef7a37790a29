//! Sans-IO AMQP 0-9-1 streams, message assembly and connection state
//! machines (client and server roles). Under construction: this crate
//! currently only re-exports the frame layer it will build on.
//!
//! ```
//! assert_eq!(amqp_codec::wire::FRAME_END, 0xCE);
//! ```

#![forbid(unsafe_code)]

/// The frame layer this crate builds on.
pub use amqp_wire as wire;
