//! The `tls_stream` check: bytes through the broker's TLS path — a rustls
//! `ServerConnection` with the configuration
//! [`amqp_broker::tls::server_config`] builds from a generated CA, server
//! and client certificate — and on into an AMQP server connection and the
//! broker's core, as `serve_tls` wires them (plaintext out of rustls into
//! the codec, the codec's output back into rustls).
//!
//! Byte 0 picks the mode:
//!
//! * even: the rest is raw bytes, fed to the server in chunks whose sizes
//!   the input also gives (handshake garbage, truncated records, alerts);
//! * odd: a real rustls client (with the client certificate or without,
//!   bit 1) handshakes through in-memory pipes in fuzzer-chosen chunks,
//!   then the input is a list of operations: AMQP plaintext written into
//!   the client (raw bytes, the protocol header, or encoded frames),
//!   ciphertext moved client → server in chunks (optionally with a byte
//!   flipped), server → client, time passing, the client closing.
//!
//! Invariants: nothing panics; after every step rustls' and the codec's
//! output is drained and what the server sends stays bounded (at most
//! [`MAX_OUTPUT`] per input); the core's bookkeeping holds; a server that
//! failed (bad record, alert) takes no further input, as the glue drops
//! the connection.

use amqp_broker::core::{Core, CoreConfig, Peer};
use amqp_codec::{Connection, ServerConfig};
use arbitrary::Unstructured;
use bytes::Bytes;
use rustls::pki_types::{PrivateKeyDer, pem::PemObject};
use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// The most a server may send in answer to one input (TLS records and
/// alerts around the AMQP connection's own output).
pub const MAX_OUTPUT: usize = 8 << 20;

/// The generated PKI and the configurations, made once per process.
struct Fixture {
    tls: Arc<amqp_broker::tls::Tls>,
    /// Clients trusting the CA: without and with a client certificate.
    clients: [Arc<rustls::ClientConfig>; 2],
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(make_fixture)
}

fn make_fixture() -> Fixture {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let dir = std::env::temp_dir().join(format!("amqp-fuzz-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let ca_key = KeyPair::generate().expect("a CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "fuzz CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = p.self_signed(&ca_key).expect("a CA certificate");
    let leaf = |names: Vec<String>, cn: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().expect("a key");
        let mut p = CertificateParams::new(names).expect("parameters");
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::OrganizationName, "amqp fuzz");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![usage];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("a certificate");
        (cert, key)
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into()],
        "localhost",
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(Vec::new(), "guest", ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, text: String| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("a PEM file");
        path
    };
    let settings = amqp_broker::tls::Settings {
        cert: write("server.pem", server_cert.pem()),
        key: write("server.key", server_key.serialize_pem()),
        ca: Some(write("ca.pem", ca_cert.pem())),
        fail_if_no_peer_cert: false,
        login_from: amqp_broker::tls::LoginFrom::CommonName,
        handshake_timeout: amqp_broker::tls::HANDSHAKE_TIMEOUT,
    };
    let tls = amqp_broker::tls::Tls::new(settings).expect("the broker's TLS configuration");
    let _ = std::fs::remove_dir_all(&dir);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_cert.der().clone()).expect("the CA as a root");
    let builder = || {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots.clone())
    };
    let with_cert = builder()
        .with_client_auth_cert(
            vec![client_cert.der().clone()],
            PrivateKeyDer::from_pem_slice(client_key.serialize_pem().as_bytes())
                .expect("the client key"),
        )
        .expect("a client configuration");
    Fixture {
        tls,
        clients: [
            Arc::new(builder().with_no_client_auth()),
            Arc::new(with_cert),
        ],
    }
}

/// The broker side: rustls, the AMQP connection and the core.
struct Server {
    tls: rustls::ServerConnection,
    amqp: Connection,
    core: Core,
    now: Instant,
    /// The TLS handshake finished and the core knows the connection.
    connected: bool,
    /// rustls refused the input (the glue drops the connection).
    failed: bool,
    /// Everything the server sent, as TLS bytes.
    out: Vec<u8>,
    sent: usize,
}

impl Server {
    fn new() -> Server {
        amqp_broker::core::fixed_hashing_on_this_thread();
        let tls =
            rustls::ServerConnection::new(fixture().tls.current()).expect("a server connection");
        let now = Instant::now();
        Server {
            tls,
            amqp: Connection::server(ServerConfig::default(), now),
            core: Core::new(CoreConfig::default()),
            now,
            connected: false,
            failed: false,
            out: Vec::new(),
            sent: 0,
        }
    }

    /// TLS bytes from the client; everything they cause is carried out.
    fn input(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() && !self.failed {
            match self.tls.read_tls(&mut chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(_) => {
                    // rustls' received-plaintext buffer is full: the glue
                    // reads it before reading more (below), so this only
                    // happens with a stuck codec.
                    self.failed = true;
                    break;
                }
            }
            if self.tls.process_new_packets().is_err() {
                // An alert goes out, then the glue drops the connection.
                self.flush_tls();
                self.failed = true;
                break;
            }
            self.pump();
        }
    }

    /// Plaintext into the codec, events into the core, the codec's output
    /// back into rustls and out.
    fn pump(&mut self) {
        if !self.connected && !self.tls.is_handshaking() {
            self.connected = true;
            let f = fixture();
            let identity = self
                .tls
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|c| f.tls.identity(c));
            if identity.is_some() {
                // As serve_tls: EXTERNAL is offered too.
                let offered = ServerConfig::default()
                    .mechanisms
                    .to_string_lossy()
                    .into_owned();
                let config = ServerConfig {
                    mechanisms: amqp_codec::types::LongString::from(format!("{offered} EXTERNAL")),
                    ..ServerConfig::default()
                };
                self.amqp = Connection::server(config, self.now);
            }
            let session = amqp_broker::tls::Session::of(&self.tls);
            assert!(
                session.protocol.starts_with("tlsv1."),
                "{}",
                session.protocol
            );
            self.core.connect(
                1,
                Peer {
                    loopback: true,
                    tls_identity: identity,
                    tls: Some(session),
                },
            );
        }
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..64 {
            // WouldBlock: nothing more now; an error: closed.
            let n = self.tls.reader().read(&mut buf).unwrap_or_default();
            if n > 0 && self.connected {
                self.amqp.handle_input(Bytes::copy_from_slice(&buf[..n]));
            }
            self.drive();
            if n == 0 {
                break;
            }
        }
        self.flush_tls();
    }

    /// The codec's events into the core and the core's answers back,
    /// until quiet; the codec's output into rustls.
    fn drive(&mut self) {
        if !self.connected {
            return;
        }
        for _ in 0..64 {
            let events: Vec<_> = std::iter::from_fn(|| self.amqp.poll_event()).collect();
            let had = !events.is_empty();
            if had {
                self.core.handle(1, events, self.now);
            }
            let outs = self.core.take_outbox(1);
            let quiet = !had && outs.is_empty();
            for out in outs {
                let _ = out.apply_to(&mut self.amqp);
            }
            let _ = self.core.take_woken();
            while let Some(b) = self.amqp.poll_transmit() {
                // rustls buffers what it cannot encrypt yet up to its
                // limit; the glue waits for the socket then, which is what
                // draining below stands for.
                let mut rest: &[u8] = &b;
                while !rest.is_empty() {
                    match self.tls.writer().write(rest) {
                        Ok(0) | Err(_) => {
                            self.flush_tls();
                            if self.tls.writer().write(rest).unwrap_or(0) == 0 {
                                break;
                            }
                            rest = &[];
                        }
                        Ok(n) => rest = &rest[n..],
                    }
                }
                self.flush_tls();
            }
            if let Err(e) = self.core.check_invariants() {
                panic!("core invariant: {e}");
            }
            if quiet {
                break;
            }
        }
    }

    /// rustls' pending records out (to the client's pipe).
    fn flush_tls(&mut self) {
        while self.tls.wants_write() {
            let before = self.out.len();
            if self.tls.write_tls(&mut self.out).is_err() {
                break;
            }
            self.sent += self.out.len() - before;
            assert!(
                self.sent <= MAX_OUTPUT,
                "the server sent {} bytes for one input",
                self.sent
            );
            if self.out.len() == before {
                break;
            }
        }
    }

    /// Time passes (heartbeats, handshake and close timeouts).
    fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.amqp.handle_timeout(self.now);
        if self.connected {
            self.core.handle_timeout(self.now);
        }
        self.drive();
        self.flush_tls();
    }
}

/// The server's records into the client; false when the client fails.
fn to_client(client: &mut rustls::ClientConnection, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        match client.read_tls(&mut bytes) {
            Ok(0) => break,
            Ok(_) => {}
            Err(_) => return false,
        }
        if client.process_new_packets().is_err() {
            return false;
        }
    }
    true
}

/// Chunk sizes from the input: 1 to 64 bytes, or a whole 4 KiB.
fn chunk_size(u: &mut Unstructured<'_>) -> usize {
    match u.arbitrary::<u8>().unwrap_or(0) {
        0 => 4096,
        n => usize::from(n % 64) + 1,
    }
}

/// The check; see the module documentation.
pub fn tls_stream(data: &[u8]) {
    let _ = run(data);
}

/// How far one input got: the TLS handshake finished on the server, and
/// the AMQP plaintext bytes the client received (odd modes).
#[derive(Debug, Default, Clone, Copy)]
pub struct Reached {
    /// The server finished its TLS handshake.
    pub handshake: bool,
    /// Plaintext the client read from the broker.
    pub client_plaintext: usize,
}

/// [`tls_stream`], saying how far the input got.
pub fn run(data: &[u8]) -> Reached {
    let mut reached = Reached::default();
    let mut u = Unstructured::new(data);
    let mode = u.arbitrary::<u8>().unwrap_or(0);
    let mut server = Server::new();
    if mode & 1 == 0 {
        while !u.is_empty() && !server.failed {
            let n = chunk_size(&mut u);
            let chunk = u.bytes(n.min(u.len())).unwrap_or_default();
            server.input(chunk);
            server.out.clear();
        }
        server.advance(60_000);
        reached.handshake = server.connected;
        return reached;
    }
    let f = fixture();
    let config = f.clients[usize::from(mode >> 1 & 1)].clone();
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("a server name");
    let mut client = rustls::ClientConnection::new(config, name).expect("a client connection");
    // The handshake, in chunks the input chooses.
    for _ in 0..32 {
        if (!client.is_handshaking() && !client.wants_write()) || server.failed {
            break;
        }
        let mut c2s = Vec::new();
        while client.wants_write() {
            if client.write_tls(&mut c2s).is_err() {
                break;
            }
        }
        for chunk in c2s.chunks(chunk_size(&mut u).max(1)) {
            server.input(chunk);
        }
        let s2c = std::mem::take(&mut server.out);
        if !to_client(&mut client, &s2c) {
            return reached;
        }
    }
    reached.handshake = server.connected;
    if mode & 4 == 0 {
        let _ = client.writer().write_all(b"AMQP\x00\x00\x09\x01");
    }
    let mut c2s: Vec<u8> = Vec::new();
    while !u.is_empty() && !server.failed {
        match u.arbitrary::<u8>().unwrap_or(0) % 8 {
            // AMQP plaintext: raw bytes, or an encoded frame.
            0 | 1 => {
                let n = chunk_size(&mut u);
                let bytes = u.bytes(n.min(u.len())).unwrap_or_default();
                let _ = client.writer().write_all(bytes);
            }
            2 => {
                if let Ok(frame) = u.arbitrary::<amqp_codec::wire::Frame>() {
                    let mut b = bytes::BytesMut::new();
                    if frame.encode(&mut b).is_ok() {
                        let _ = client.writer().write_all(&b);
                    }
                }
            }
            // Ciphertext to the server, in chunks, maybe with a byte
            // flipped.
            3 | 4 => {
                while client.wants_write() {
                    if client.write_tls(&mut c2s).is_err() {
                        break;
                    }
                }
                let flip = u.arbitrary::<u16>().unwrap_or(0);
                if flip & 0x8000 != 0 && !c2s.is_empty() {
                    let at = usize::from(flip & 0x7fff) % c2s.len();
                    c2s[at] ^= 0x5a;
                }
                let n = chunk_size(&mut u);
                let take = n.min(c2s.len());
                let chunk: Vec<u8> = c2s.drain(..take).collect();
                server.input(&chunk);
            }
            // The server's records to the client (which may then answer).
            5 => {
                let s2c = std::mem::take(&mut server.out);
                if !to_client(&mut client, &s2c) {
                    // The client gave up: what it sends stays garbage.
                    let _ = client.writer().write_all(b"\x15\x03\x03\x00\x02\x02\x28");
                }
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = client.reader().read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    reached.client_plaintext += n;
                }
            }
            6 => {
                let ms = u.arbitrary::<u16>().unwrap_or(0);
                server.advance(u64::from(ms) * 10);
            }
            _ => client.send_close_notify(),
        }
        // The client's pipe stays bounded: what the server does not read
        // is dropped with the connection in real life.
        if server.out.len() > MAX_OUTPUT / 2 {
            server.out.clear();
        }
    }
    // Everything left goes in whole, then time runs out.
    while client.wants_write() {
        if client.write_tls(&mut c2s).is_err() {
            break;
        }
    }
    server.input(&c2s);
    server.advance(600_000);
    reached
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_through_to_the_amqp_connection() {
        // Mode 1 (no client certificate) and 3 (with one): two handshake
        // rounds in 4 KiB chunks, then the header goes in (op 3) and
        // connection.start comes back through TLS (op 5).
        for mode in [1u8, 3] {
            let r = run(&[mode, 0, 0, 3, 0, 0, 0, 5]);
            assert!(r.handshake, "mode {mode}: {r:?}");
            assert!(r.client_plaintext > 8, "mode {mode}: {r:?}");
        }
        // A flipped byte in a record: the server fails, nothing panics.
        let r = run(&[1, 0, 0, 3, 0x10, 0x80, 0, 5]);
        assert!(r.handshake && r.client_plaintext == 0, "{r:?}");
        // Garbage never finishes a handshake.
        assert!(!run(b"\x00\x05\x16\x03\x01\x00\x05hello").handshake);
    }
}
