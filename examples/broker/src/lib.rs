//! amqp-broker: a RabbitMQ-compatible AMQP 0-9-1 broker built from the
//! amqp-* crates.
//!
//! Two layers, as in the crates it is built from:
//!
//! * [`core`]: a deterministic state machine that owns virtual hosts
//!   (each an [`amqp_router::Router`]), queues, consumers, deliveries,
//!   unacknowledged messages, publisher confirms and transactions. It
//!   never touches a socket, a thread, a clock or a file: a connection's
//!   [`amqp_codec::Event`]s go in, with the time, and what each
//!   connection's codec must send comes out.
//! * [`shell`]: the tokio server: listeners, a task per connection that
//!   feeds its [`amqp_codec::Connection`], applies what the core says and
//!   writes what the codec transmits; timers and signals. Plain TCP and
//!   TLS ([`tls`]: rustls, client certificates, SASL EXTERNAL) share that
//!   one connection loop.
//!
//! Driving the core by hand, as the shell and the simulation tests do:
//!
//! ```
//! use amqp_broker::core::{Core, CoreConfig, Out, Peer};
//! use amqp_codec::{Connection, ClientConfig, ServerConfig, Event, Answer};
//! use std::time::Instant;
//!
//! let now = Instant::now();
//! let mut core = Core::new(CoreConfig::default());
//! core.connect(1, Peer { loopback: true, ..Peer::default() });
//! let mut client = Connection::client(ClientConfig::default(), now);
//! let mut server = Connection::server(ServerConfig::default(), now);
//! // Move bytes and events until both sides are quiet.
//! for _ in 0..10 {
//!     while let Some(b) = client.poll_transmit() { server.handle_input(b); }
//!     let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
//!     core.handle(1, events, now);
//!     for out in core.take_outbox(1) {
//!         if let Out::Decide { id, answer } = out { server.decide(id, answer).unwrap(); }
//!     }
//!     while let Some(b) = server.poll_transmit() { client.handle_input(b); }
//! }
//! assert!(matches!(client.poll_event(), Some(Event::Connected { .. })));
//! ```

#![forbid(unsafe_code)]

pub mod alarms;
pub mod auth;
pub mod config;
mod consumers;
pub mod core;
pub mod definitions;
pub mod disk;
pub mod lifecycle;
pub mod management;
pub mod paging;
pub mod policy;
pub mod queue;
pub mod shell;
pub mod store;
mod tags;
pub mod testing;
pub mod tls;
