//! The checks behind the fuzz targets, one public function per target, so
//! that `cargo test -p amqp-fuzz` replays every committed corpus input.

pub mod codec;
pub mod router;
pub mod wire;
