//! The vocabulary of AMQP 0-9-1, as RabbitMQ speaks it: field values and
//! tables, short and long strings, decimals and timestamps, the 66 methods
//! (one struct each, plus the [`Method`] enum), [`BasicProperties`], reply
//! codes and the workspace's one protocol error type, [`ProtocolError`].
//!
//! This crate does no parsing and no I/O; `amqp-wire` turns these values
//! into frames and back, `amqp-codec` runs connections with them, and
//! `amqp-router` routes with their tables. Every method and property is
//! written down once, in the protocol table ([`for_each_method!`],
//! [`for_each_basic_property!`]), and everything here is generated from it.
//!
//! ```
//! use amqp_types::{FieldTable, FieldValue, Method, MethodKind, ShortString, method::QueueDeclare};
//!
//! let mut arguments = FieldTable::new();
//! arguments.insert("x-max-priority", 10u8);
//! let declare = Method::from(QueueDeclare {
//!     queue: ShortString::try_from("orders")?,
//!     durable: true,
//!     arguments,
//!     ..Default::default()
//! });
//! assert_eq!(declare.name(), "queue.declare");
//! assert_eq!((declare.class_id(), declare.method_id()), (50, 10));
//! assert!(declare.expects_reply());
//! assert_eq!(declare.info().replies, &[MethodKind::QueueDeclareOk]);
//! # Ok::<(), amqp_types::ShortStringTooLong>(())
//! ```
//!
//! # Features
//!
//! * `arbitrary`: [`arbitrary::Arbitrary`](https://docs.rs/arbitrary) for
//!   every public value type, generating only values that serialize (short
//!   strings of at most 255 bytes, nesting within [`MAX_NESTING_DEPTH`]).
//!   For fuzzing your own code with well-formed AMQP values.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod constants;
pub mod method;
mod properties;
mod reply;
mod strings;
pub mod table;
mod value;

pub use method::{Method, MethodInfo, MethodKind};
pub use properties::BasicProperties;
pub use reply::{ErrorKind, ProtocolError, ReplyClass, ReplyCode, Scope};
pub use strings::{LongString, ShortString, ShortStringTooLong};
pub use value::{Decimal, FieldArray, FieldTable, FieldValue, MAX_NESTING_DEPTH};

#[cfg(feature = "arbitrary")]
mod arb {
    use super::*;
    use arbitrary::{Arbitrary, Result, Unstructured};

    impl<'a> Arbitrary<'a> for ShortString {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            let len = u.int_in_range(0..=ShortString::MAX_LEN)?;
            let bytes = u.bytes(len.min(u.len()))?;
            Ok(ShortString::from_bytes(bytes).expect("length checked"))
        }
    }

    impl<'a> Arbitrary<'a> for LongString {
        fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
            let v: Vec<u8> = u.arbitrary()?;
            Ok(LongString::from(v))
        }
    }
}
