//! amqp-perftest: a RabbitMQ-PerfTest-style AMQP 0-9-1 load generator
//! built on amqp-codec's Sans-IO client role, and a sink broker stand-in
//! built on its server role to measure the tool's own ceiling.
//!
//! Every producer and consumer has its own connection; all of them are
//! driven by a multi-threaded tokio runtime with a few worker threads
//! (`--threads`). Each connection's task gathers the codec's transmit
//! segments into one write, reads 256 KiB chunks that go to the codec
//! without copying, and carves message bodies out of a shared buffer.
//!
//! The library side exists for the tests: [`cli::RunArgs`] parses the
//! options, [`run::run`] runs a test and returns a [`stats::Summary`],
//! [`sink::serve`] runs the sink.

#![forbid(unsafe_code)]

pub mod cli;
pub mod idle;
pub mod link;
pub mod pacer;
pub mod run;
pub mod sink;
pub mod stats;

pub use cli::{Cli, Command, IdleArgs, RunArgs, SinkArgs};
pub use run::{Progress, run, run_async};
pub use stats::Summary;
