//! Sans-IO AMQP 0-9-1: frame streams, message assembly and the connection
//! state machine for both the client and the server role.
//!
//! Bytes go in ([`Connection::handle_input`]), time goes in as an argument
//! ([`Connection::handle_timeout`]), commands go in as method calls; bytes
//! to send ([`Connection::poll_transmit`]), typed [`Event`]s
//! ([`Connection::poll_event`]) and the next wake-up
//! ([`Connection::poll_timeout`]) come out. No socket, no clock, no runtime.
//! The machine enforces framing, sequencing, channel state, the handshake
//! and negotiation; policy (credentials, vhost access, unsupported
//! requests, unknown delivery tags) is the embedder's, asked through
//! [`Event::Decision`] and answered with [`Connection::decide`] or
//! [`Connection::refuse`].
//!
//! Driving a client by hand (here against a scripted server, also built
//! from this crate):
//!
//! ```
//! use amqp_codec::{Answer, ClientConfig, Connection, Event, ServerConfig};
//! use amqp_codec::types::method::{BasicPublish, QueueDeclare};
//! use std::time::Instant;
//!
//! let now = Instant::now();
//! let mut client = Connection::client(ClientConfig::default(), now);
//! let mut server = Connection::server(ServerConfig::default(), now);
//! // Move bytes both ways until both sides are quiet; the server accepts
//! // every decision and answers queue.declare.
//! let mut pump = |c: &mut Connection, s: &mut Connection| {
//!     let mut events = vec![];
//!     loop {
//!         let mut moved = false;
//!         while let Some(b) = c.poll_transmit() { s.handle_input(b); moved = true; }
//!         while let Some(b) = s.poll_transmit() { c.handle_input(b); moved = true; }
//!         while let Some(e) = s.poll_event() {
//!             match e {
//!                 Event::Decision { id, .. } => s.decide(id, Answer::Accept).unwrap(),
//!                 Event::Method { channel, method: amqp_codec::types::Method::QueueDeclare(q) } => s
//!                     .send_method(channel, amqp_codec::types::method::QueueDeclareOk { queue: q.queue, ..Default::default() })
//!                     .unwrap(),
//!                 _ => {}
//!             }
//!         }
//!         while let Some(e) = c.poll_event() { events.push(e); }
//!         if !moved { return events; }
//!     }
//! };
//! let ev = pump(&mut client, &mut server);
//! assert!(matches!(ev[0], Event::Connected { .. }));
//!
//! let ch = client.open_channel()?;
//! let ev = pump(&mut client, &mut server);
//! assert!(matches!(ev[0], Event::ChannelOpened { channel: 1 }));
//! client.send_method(ch, QueueDeclare { queue: "jobs".try_into()?, ..Default::default() })?;
//! client.publish(ch, BasicPublish { routing_key: "jobs".try_into()?, ..Default::default() },
//!                &Default::default(), "hello".into())?;
//! let ev = pump(&mut client, &mut server);
//! assert!(matches!(&ev[0], Event::Method { channel: 1, .. })); // queue.declare-ok
//! client.close(amqp_codec::types::ReplyCode::REPLY_SUCCESS, "bye")?;
//! let ev = pump(&mut client, &mut server);
//! assert!(matches!(ev[0], Event::Closed { .. }) && client.is_closed());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Layers, usable on their own:
//!
//! * [`FrameDecoder`]: owned input chunks in, frames out, any chunking;
//!   frame_max enforced from the frame header; bounded buffering.
//! * [`FrameEncoder`]: frames and content out, bodies split by frame_max as
//!   zero-copy [`bytes::Bytes`] segments; [`FrameEncoder::queued`] for
//!   backpressure.
//! * [`Connection`]: both roles; content assembly into [`Message`]s (or
//!   body chunks), heartbeats, close handshakes, confirms.
//!
//! # Features
//!
//! * `tokio-util`: [`codec::AmqpCodec`], a `Decoder`/`Encoder` of frames for
//!   `tokio_util::codec::Framed`.
//!
// The link resolves only where the module exists (docs.rs builds with every
// feature); without the feature it points at this section.
#![cfg_attr(
    feature = "tokio-util",
    doc = "[`codec::AmqpCodec`]: crate::codec::AmqpCodec"
)]
#![cfg_attr(not(feature = "tokio-util"), doc = "[`codec::AmqpCodec`]: #features")]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod channels;
mod connection;
mod model;
pub mod sasl;
pub mod stream;

#[cfg(feature = "tokio-util")]
pub mod codec;

pub use connection::{Connection, MAX_PENDING_EVENTS};
pub use model::*;
pub use sasl::Credentials;
pub use stream::{Body, Decoded, FrameDecoder, FrameEncoder, SendError};

/// The frame layer this crate builds on.
pub use amqp_wire as wire;

/// The vocabulary (methods, properties, tables, reply codes).
pub mod types {
    pub use amqp_types::*;
}
