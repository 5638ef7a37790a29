//! Protocol constants: frame types, sizes, the protocol header.

/// Frame type octet of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type octet of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type octet of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type octet of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Bytes of frame header: type (1), channel (2), size (4).
pub const FRAME_HEADER_SIZE: usize = 7;
/// Bytes a frame adds to its payload: the header and the end octet.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max a peer may negotiate, and the one in force until
/// `connection.tune-ok`.
pub const FRAME_MIN_SIZE: u32 = 4096;
/// The protocol header a 0-9-1 client sends first.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// The class id of `basic`, the only class with content.
pub const CLASS_BASIC: u16 = 60;
/// RabbitMQ 3.10's default maximum message size (128 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 128 * 1024 * 1024;
