//! TLS (`amqps://`): the broker's second listener with rustls, client
//! certificates verified against a CA, SASL EXTERNAL by the certificate's
//! distinguished name or common name, hostile handshakes, SIGHUP reloads;
//! pika and amqplib over amqps:// (programs in `tests/tls-clients/`;
//! skipped with `AMQP_INTEROP=0`).
//!
//! Every certificate is made here with rcgen, in a temporary directory:
//! no fixed files, nothing that expires. Brokers use ports 5760-5769 (an
//! AMQP and a TLS port each, from a pool: the tests run in parallel).

mod support;

use amqp_codec::types::Method;
use amqp_codec::types::method::{BasicGet, QueueDeclare};
use amqp_codec::{ClientConfig, Connection, Credentials, Event};
use bytes::Bytes;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use support::Broker;

// ----- ports -------------------------------------------------------------

/// Pairs of ports (AMQP, TLS) in 5760-5769, handed out one pair per
/// broker and back when the test is done.
static POOL: Mutex<Vec<(u16, u16)>> = Mutex::new(Vec::new());
static FREED: Condvar = Condvar::new();

struct Ports {
    amqp: u16,
    tls: u16,
}

impl Ports {
    fn take() -> Ports {
        let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
        if pool.is_empty() && !INIT.swap(true, std::sync::atomic::Ordering::SeqCst) {
            pool.extend((5760..5770).step_by(2).map(|p| (p, p + 1)));
        }
        loop {
            if let Some((amqp, tls)) = pool.pop() {
                return Ports { amqp, tls };
            }
            pool = FREED.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }
}

static INIT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl Drop for Ports {
    fn drop(&mut self) {
        POOL.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.amqp, self.tls));
        FREED.notify_one();
    }
}

// ----- certificates ------------------------------------------------------

/// A CA, a server certificate for localhost/127.0.0.1 and client
/// certificates, as PEM files in a fresh directory.
struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
    server_cert: PathBuf,
    server_key: PathBuf,
}

/// A client certificate's files.
struct ClientCert {
    cert: PathBuf,
    key: PathBuf,
}

const CLIENT_DN: &str = "CN=tls-client,O=amqp-toolkit tests";

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = std::env::temp_dir().join(format!(
            "amqp-broker-tls-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, "amqp-toolkit test CA");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = p.self_signed(&ca_key).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_cert.pem()).unwrap();
        let mut pki = Pki {
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            dir,
            ca,
            ca_cert,
            ca_key,
        };
        pki.server("localhost");
        pki
    }

    /// (Re)writes the server certificate with this common name; returns
    /// its DER.
    fn server(&mut self, cn: &str) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        std::fs::write(&self.server_cert, cert.pem()).unwrap();
        std::fs::write(&self.server_key, key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    /// A client certificate with O=`org` (if any) and CN=`cn`, signed by
    /// the CA.
    fn client(&self, file: &str, org: Option<&str>, cn: &str) -> ClientCert {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(o) = org {
            p.distinguished_name.push(DnType::OrganizationName, o);
        }
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let c = ClientCert {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&c.cert, cert.pem()).unwrap();
        std::fs::write(&c.key, key.serialize_pem()).unwrap();
        c
    }

    /// The standard client certificate: O=amqp-toolkit tests, CN=tls-client.
    fn tls_client(&self) -> ClientCert {
        self.client("client", Some("amqp-toolkit tests"), "tls-client")
    }

    /// A config file with guest and these users (random passwords), all
    /// with every permission on `/`.
    fn config(&self, users: &[&str]) -> PathBuf {
        let mut text = String::from(
            "[[users]]\nname = \"guest\"\npassword = \"guest\"\ntags = [\"administrator\"]\n",
        );
        for u in ["guest"].iter().chain(users) {
            if *u != "guest" {
                text.push_str(&format!(
                    "[[users]]\nname = \"{u}\"\npassword = \"{}\"\n",
                    random_password()
                ));
            }
            text.push_str(&format!(
                "[[permissions]]\nuser = \"{u}\"\nvhost = \"/\"\nconfigure = \".*\"\nwrite = \".*\"\nread = \".*\"\n"
            ));
        }
        let path = self.dir.join("broker.toml");
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn random_password() -> String {
    use std::hash::BuildHasher;
    format!(
        "{:016x}",
        std::collections::hash_map::RandomState::new().hash_one(Instant::now())
    )
}

// ----- the broker --------------------------------------------------------

/// Starts a broker with a TLS listener on `ports.tls` and waits until it
/// accepts connections there.
fn start(ports: &Ports, pki: &Pki, extra: &[&str]) -> Broker {
    let tls = format!("127.0.0.1:{}", ports.tls);
    let mut args = vec![];
    if !extra.contains(&"--management") {
        args.extend(["--management", "none"]);
    }
    args.extend([
        "--prometheus",
        "none",
        "--tls-listen",
        &tls,
        "--tls-cert",
        pki.server_cert.to_str().unwrap(),
        "--tls-key",
        pki.server_key.to_str().unwrap(),
    ]);
    args.extend_from_slice(extra);
    let b = Broker::start(ports.amqp..ports.amqp + 1, &args);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", ports.tls)).is_err() {
        assert!(Instant::now() < deadline, "no TLS listener on {tls}");
        std::thread::sleep(Duration::from_millis(20));
    }
    b
}

// ----- a TLS client on amqp-codec ----------------------------------------

fn client_tls(pki: &Pki, cert: Option<&ClientCert>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    Arc::new(match cert {
        None => b.with_no_client_auth(),
        Some(c) => b
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(&c.cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(&c.key).unwrap(),
            )
            .unwrap(),
    })
}

/// A blocking AMQP client over TLS (rustls driven by hand over a
/// `TcpStream` with a short read timeout).
struct TlsClient {
    conn: Connection,
    tls: rustls::ClientConnection,
    sock: TcpStream,
    events: Vec<Event>,
}

impl TlsClient {
    /// Connects, handshakes and logs in; `Err` says what failed (a TLS
    /// error, the broker's close text).
    fn connect(
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        credentials: Credentials,
    ) -> Result<TlsClient, String> {
        let mut sock = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut session =
            rustls::ClientConnection::new(tls, ServerName::try_from("localhost").unwrap())
                .map_err(|e| e.to_string())?;
        while session.is_handshaking() {
            session
                .complete_io(&mut sock)
                .map_err(|e| format!("TLS handshake: {e}"))?;
        }
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let config = ClientConfig {
            credentials,
            ..ClientConfig::default()
        };
        let mut c = TlsClient {
            conn: Connection::client(config, Instant::now()),
            tls: session,
            sock,
            events: Vec::new(),
        };
        c.until(|e| matches!(e, Event::Connected { .. }))?;
        c.conn.open_channel_with(1).map_err(|e| e.to_string())?;
        c.until(|e| matches!(e, Event::ChannelOpened { .. }))?;
        Ok(c)
    }

    /// The server's certificate (DER).
    fn server_cert(&self) -> Vec<u8> {
        self.tls.peer_certificates().unwrap()[0].to_vec()
    }

    /// Moves bytes until an event matches (at most 10 s); `Err` on a TLS
    /// error, the end of the stream or the connection's close.
    fn until(&mut self, mut f: impl FnMut(&Event) -> bool) -> Result<Event, String> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while let Some(b) = self.conn.poll_transmit() {
                // rustls buffers 64 KiB of plaintext: send as it fills.
                let mut rest = &b[..];
                while !rest.is_empty() {
                    let n = self.tls.writer().write(rest).unwrap();
                    rest = &rest[n..];
                    self.flush()?;
                }
            }
            self.flush()?;
            while let Some(e) = self.conn.poll_event() {
                if f(&e) {
                    return Ok(e);
                }
                if let Event::Closed { cause } = &e {
                    return Err(format!("closed: {cause:?}"));
                }
                self.events.push(e);
            }
            if Instant::now() > deadline {
                return Err(format!("timed out; events: {:?}", self.events));
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => return Err("the broker closed the connection".into()),
                Ok(_) => {
                    self.tls
                        .process_new_packets()
                        .map_err(|e| format!("TLS: {e}"))?;
                    loop {
                        match self.tls.reader().read(&mut buf) {
                            Ok(0) => return Err("the broker ended the TLS session".into()),
                            Ok(n) => self.conn.handle_input(Bytes::copy_from_slice(&buf[..n])),
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                            Err(e) => return Err(format!("read: {e}")),
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(format!("read: {e}")),
            }
            self.conn.handle_timeout(Instant::now());
        }
    }

    /// Writes out what rustls has encrypted.
    fn flush(&mut self) -> Result<(), String> {
        while self.tls.wants_write() {
            self.tls
                .write_tls(&mut self.sock)
                .map_err(|e| format!("write: {e}"))?;
        }
        Ok(())
    }

    fn call(&mut self, m: impl Into<Method>) -> Method {
        self.conn.send_method(1, m).unwrap();
        match self.until(|e| matches!(e, Event::Method { .. })).unwrap() {
            Event::Method { method, .. } => method,
            _ => unreachable!(),
        }
    }

    /// Declares a queue, publishes `body` to it and gets it back.
    fn round_trip(&mut self, queue: &str, body: &str) -> String {
        let declared = self.call(QueueDeclare {
            queue: queue.try_into().unwrap(),
            ..Default::default()
        });
        assert!(
            matches!(declared, Method::QueueDeclareOk(_)),
            "{declared:?}"
        );
        self.conn
            .publish(
                1,
                amqp_codec::types::method::BasicPublish {
                    routing_key: queue.try_into().unwrap(),
                    ..Default::default()
                },
                &amqp_codec::types::BasicProperties::default(),
                Bytes::from(body.to_owned()),
            )
            .unwrap();
        self.conn
            .send_method(
                1,
                BasicGet {
                    queue: queue.try_into().unwrap(),
                    no_ack: true,
                    ..Default::default()
                },
            )
            .unwrap();
        match self
            .until(|e| matches!(e, Event::Message { .. } | Event::Method { .. }))
            .unwrap()
        {
            Event::Message { message, .. } => String::from_utf8_lossy(&message.body).into_owned(),
            other => panic!("no message: {other:?}"),
        }
    }
}

fn plain() -> Credentials {
    Credentials::plain("guest", "guest")
}

fn external() -> Credentials {
    Credentials::External {
        identity: String::new(),
    }
}

// ----- the tests ---------------------------------------------------------

#[test]
fn plain_login_and_messages_over_tls_beside_plain_tcp() {
    let ports = Ports::take();
    let pki = Pki::new("plain");
    let b = start(&ports, &pki, &[]);
    let mut c = TlsClient::connect(ports.tls, client_tls(&pki, None), plain()).unwrap();
    assert_eq!(c.round_trip("tls-q", "over TLS"), "over TLS");
    // A large message crosses several TLS records both ways.
    let big = "x".repeat(300_000);
    assert_eq!(c.round_trip("tls-big", &big).len(), 300_000);
    // The plain listener serves as before, and sees the same queues.
    let mut p = support::Client::connect(b.addr);
    let ok = p.call(QueueDeclare {
        queue: "tls-q".try_into().unwrap(),
        passive: true,
        ..Default::default()
    });
    assert!(matches!(ok, Method::QueueDeclareOk(_)), "{ok:?}");
    // Without a CA nothing asks for client certificates: EXTERNAL is not
    // offered (the client refuses to go on).
    let e = TlsClient::connect(ports.tls, client_tls(&pki, None), external())
        .err()
        .expect("EXTERNAL without a client certificate");
    assert!(e.contains("EXTERNAL"), "{e}");
}

#[test]
fn external_logs_in_the_user_the_certificate_dn_names() {
    let ports = Ports::take();
    let pki = Pki::new("dn");
    let config = pki.config(&[CLIENT_DN]);
    let ca = pki.ca.to_str().unwrap().to_owned();
    // The management API on 10000 above the AMQP port (15760-15769).
    let management = format!("127.0.0.1:{}", ports.amqp + 10_000);
    let b = start(
        &ports,
        &pki,
        &[
            "--config",
            config.to_str().unwrap(),
            "--tls-ca",
            &ca,
            "--management",
            &management,
        ],
    );
    let cert = pki.tls_client();
    let mut c = TlsClient::connect(ports.tls, client_tls(&pki, Some(&cert)), external()).unwrap();
    assert_eq!(c.round_trip("dn-q", "as the DN"), "as the DN");
    // The management API shows the connection as TLS, with its user and
    // certificate.
    let list = support::http(
        management.parse().unwrap(),
        "GET",
        "/api/connections",
        Some("guest:guest"),
        "",
    )
    .json();
    let tls: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["ssl"] == true)
        .collect();
    assert_eq!(tls.len(), 1, "{list:#}");
    assert_eq!(tls[0]["user"], CLIENT_DN);
    assert_eq!(tls[0]["peer_cert_subject"], CLIENT_DN);
    assert_eq!(tls[0]["peer_cert_issuer"], "CN=amqp-toolkit test CA");
    assert_eq!(tls[0]["ssl_protocol"], "tlsv1.3");
    assert!(tls[0]["ssl_cipher"].as_str().unwrap().starts_with("TLS13_"));
    // A certificate whose DN names no user is refused with RabbitMQ's text.
    let stranger = pki.client("stranger", None, "stranger");
    let e = TlsClient::connect(ports.tls, client_tls(&pki, Some(&stranger)), external())
        .err()
        .expect("an unknown certificate DN logged in");
    assert!(
        e.contains("ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL"),
        "{e}"
    );
    // The same certificate's CN is no user here (DN mode).
    let cn_only = pki.client("cn-only", None, "tls-client");
    assert!(TlsClient::connect(ports.tls, client_tls(&pki, Some(&cn_only)), external()).is_err());
    // verify_peer without fail_if_no_peer_cert: no certificate, no
    // EXTERNAL offered (the client refuses to go on), PLAIN works.
    let e = TlsClient::connect(ports.tls, client_tls(&pki, None), external())
        .err()
        .expect("EXTERNAL without a client certificate");
    assert!(e.contains("EXTERNAL"), "{e}");
    let mut p = TlsClient::connect(ports.tls, client_tls(&pki, None), plain()).unwrap();
    assert_eq!(p.round_trip("dn-plain", "no cert"), "no cert");
    // PLAIN with a certificate works too, as the user it names.
    let mut p = TlsClient::connect(ports.tls, client_tls(&pki, Some(&cert)), plain()).unwrap();
    assert_eq!(p.round_trip("dn-plain", "cert and PLAIN"), "cert and PLAIN");
    // EXTERNAL is offered on TLS with a verified certificate only: not on
    // the plain listener.
    assert!(offered(b.addr).contains("AMQPLAIN"));
    assert!(!offered(b.addr).contains("EXTERNAL"));
}

/// The connection.start frame a plain listener sends, as text (its
/// mechanisms string is in it).
fn offered(addr: std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let mut frame = vec![0u8; 7];
    s.read_exact(&mut frame).unwrap();
    let size = u32::from_be_bytes(frame[3..7].try_into().unwrap()) as usize;
    frame.resize(7 + size + 1, 0);
    s.read_exact(&mut frame[7..]).unwrap();
    assert_eq!(&frame[7..11], [0, 10, 0, 10], "not connection.start");
    String::from_utf8_lossy(&frame).into_owned()
}

#[test]
fn external_by_common_name_when_configured() {
    let ports = Ports::take();
    let pki = Pki::new("cn");
    let config = pki.config(&["tls-client"]);
    let ca = pki.ca.to_str().unwrap().to_owned();
    let _b = start(
        &ports,
        &pki,
        &[
            "--config",
            config.to_str().unwrap(),
            "--tls-ca",
            &ca,
            "--ssl-cert-login-from",
            "common_name",
        ],
    );
    let cert = pki.tls_client();
    let mut c = TlsClient::connect(ports.tls, client_tls(&pki, Some(&cert)), external()).unwrap();
    assert_eq!(c.round_trip("cn-q", "as the CN"), "as the CN");
    let stranger = pki.client("stranger", Some("amqp-toolkit tests"), "stranger");
    let e = TlsClient::connect(ports.tls, client_tls(&pki, Some(&stranger)), external())
        .err()
        .expect("an unknown CN logged in");
    assert!(e.contains("ACCESS_REFUSED"), "{e}");
}

#[test]
fn the_config_files_tls_section_with_relative_paths() {
    let ports = Ports::take();
    let pki = Pki::new("config");
    let config = pki.config(&["tls-client"]);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "[tls]\ncert = \"server.pem\"\nkey = \"server.key\"\nca = \"ca.pem\"\nlisten = [\"127.0.0.1:{}\"]\nfail_if_no_peer_cert = true\nssl_cert_login_from = \"common_name\"\n",
        ports.tls
    ));
    std::fs::write(&config, text).unwrap();
    let _b = Broker::start(
        ports.amqp..ports.amqp + 1,
        &["--config", config.to_str().unwrap(), "--management", "none"],
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", ports.tls)).is_err() {
        assert!(Instant::now() < deadline, "no TLS listener from [tls]");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(TlsClient::connect(ports.tls, client_tls(&pki, None), plain()).is_err());
    let cert = pki.tls_client();
    let mut c = TlsClient::connect(ports.tls, client_tls(&pki, Some(&cert)), external()).unwrap();
    assert_eq!(c.round_trip("config-q", "from [tls]"), "from [tls]");
}

#[test]
fn fail_if_no_peer_cert_refuses_clients_without_one() {
    let ports = Ports::take();
    let pki = Pki::new("fail");
    let ca = pki.ca.to_str().unwrap().to_owned();
    let config = pki.config(&[CLIENT_DN]);
    let _b = start(
        &ports,
        &pki,
        &[
            "--config",
            config.to_str().unwrap(),
            "--tls-ca",
            &ca,
            "--tls-fail-if-no-peer-cert",
        ],
    );
    let e = TlsClient::connect(ports.tls, client_tls(&pki, None), plain())
        .err()
        .expect("a client without a certificate got in");
    assert!(e.contains("TLS"), "{e}");
    // A certificate from another CA is refused too.
    let other = Pki::new("other-ca");
    let foreign = other.tls_client();
    let mut cfg = rustls::ClientConfig::clone(&client_tls(&other, Some(&foreign)));
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&pki.ca).unwrap())
        .unwrap();
    cfg = rustls::ClientConfig::builder_with_provider(cfg.crypto_provider().clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from_pem_file(&foreign.cert).unwrap()],
            PrivateKeyDer::from_pem_file(&foreign.key).unwrap(),
        )
        .unwrap();
    let e = TlsClient::connect(ports.tls, Arc::new(cfg), external())
        .err()
        .expect("a certificate of another CA got in");
    assert!(e.contains("TLS"), "{e}");
    let cert = pki.tls_client();
    let mut c = TlsClient::connect(ports.tls, client_tls(&pki, Some(&cert)), external()).unwrap();
    assert_eq!(c.round_trip("fail-q", "with a cert"), "with a cert");
}

#[test]
fn hostile_handshakes_are_cut_off_without_hurting_others() {
    let ports = Ports::take();
    let pki = Pki::new("hostile");
    let _b = start(&ports, &pki, &["--tls-handshake-timeout", "1"]);
    let mut good = TlsClient::connect(ports.tls, client_tls(&pki, None), plain()).unwrap();
    // An AMQP header where a ClientHello belongs: closed at once.
    let mut s = TcpStream::connect(("127.0.0.1", ports.tls)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"AMQP\x00\x00\x09\x01").unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf);
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "garbage held the connection"
    );
    // Either the end of the stream or an alert record (type 21), then the end.
    match n {
        Ok(0) | Err(_) => {}
        Ok(_) => {
            assert_eq!(buf[0], 21, "not a TLS alert: {:?}", &buf[..8]);
            assert!(matches!(s.read(&mut buf), Ok(0) | Err(_)));
        }
    }
    // A client that never says anything is cut off after the handshake
    // timeout (1 s here).
    let mut idle = TcpStream::connect(("127.0.0.1", ports.tls)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    assert!(matches!(idle.read(&mut buf), Ok(0) | Err(_)));
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "idle handshake cut after {waited:?}"
    );
    // The good connection is untouched.
    assert_eq!(good.round_trip("hostile-q", "still here"), "still here");
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_connections() {
    let ports = Ports::take();
    let mut pki = Pki::new("reload");
    let first = std::fs::read(&pki.server_cert).unwrap();
    let b = start(&ports, &pki, &[]);
    let mut old = TlsClient::connect(ports.tls, client_tls(&pki, None), plain()).unwrap();
    assert_eq!(
        old.server_cert(),
        CertificateDer::from_pem_slice(&first).unwrap().to_vec()
    );
    let second = pki.server("reloaded");
    let status = Command::new("kill")
        .args(["-HUP", &b.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = TlsClient::connect(ports.tls, client_tls(&pki, None), plain()).unwrap();
        if c.server_cert() == second {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still the old certificate after SIGHUP"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The connection made before the reload goes on.
    assert_eq!(old.round_trip("reload-q", "kept"), "kept");
    // A broken file on reload keeps the certificate in use.
    std::fs::write(&pki.server_key, "not a key").unwrap();
    Command::new("kill")
        .args(["-HUP", &b.pid().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let c = TlsClient::connect(ports.tls, client_tls(&pki, None), plain()).unwrap();
    assert_eq!(c.server_cert(), second);
}

#[test]
fn startup_errors_name_the_file_and_the_flag() {
    let pki = Pki::new("errors");
    let run = |args: &[&str]| {
        let o = Command::new(env!("CARGO_BIN_EXE_amqp-broker"))
            .args(["--listen", "127.0.0.1:0", "--management", "none"])
            .args(["--prometheus", "none", "--data-dir"])
            .arg(pki.dir.join("data"))
            .args(args)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} started");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let missing = pki.dir.join("missing.pem");
    let e = run(&[
        "--tls-cert",
        missing.to_str().unwrap(),
        "--tls-key",
        pki.server_key.to_str().unwrap(),
    ]);
    assert!(
        e.contains(missing.to_str().unwrap()) && e.contains("--tls-cert"),
        "{e}"
    );
    let e = run(&["--tls-cert", pki.server_cert.to_str().unwrap()]);
    assert!(e.contains("--tls-key"), "{e}");
    let e = run(&["--tls-ca", pki.ca.to_str().unwrap()]);
    assert!(e.contains("--tls-cert"), "{e}");
    let e = run(&[
        "--tls-cert",
        pki.server_cert.to_str().unwrap(),
        "--tls-key",
        pki.ca.to_str().unwrap(),
    ]);
    assert!(e.contains("private key") && e.contains("--tls-key"), "{e}");
    let e = run(&[
        "--tls-cert",
        pki.server_cert.to_str().unwrap(),
        "--tls-key",
        pki.server_key.to_str().unwrap(),
        "--tls-fail-if-no-peer-cert",
    ]);
    assert!(e.contains("--tls-ca"), "{e}");
}

// ----- interop: pika and amqplib over amqps:// ---------------------------

fn clients() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tls-clients")
}

fn program(prog: &str, args: &[&str]) -> String {
    let node_path = std::env::var("AMQP_NODE_PATH").unwrap_or_else(|_| {
        support::workspace()
            .join("target/node/node_modules")
            .display()
            .to_string()
    });
    let o = Command::new(prog)
        .args(args)
        .current_dir(clients())
        .env("NODE_PATH", node_path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {prog}: {e}"));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "{prog} {args:?} failed: {}\n{out}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

/// The interop broker: CA verification on, the DN user configured.
fn interop_broker(ports: &Ports, pki: &Pki) -> Broker {
    let config = pki.config(&[CLIENT_DN]);
    let ca = pki.ca.to_str().unwrap().to_owned();
    start(
        ports,
        pki,
        &["--config", config.to_str().unwrap(), "--tls-ca", &ca],
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs a client program over amqps:// three ways (PLAIN without and with
/// a client certificate, EXTERNAL) and returns what it needs for more.
fn client_over_amqps<'a>(
    interpreter: &str,
    script: &str,
    ports: &Ports,
    pki: &'a Pki,
) -> impl Fn(&[&str]) -> String + 'a {
    let port = ports.tls.to_string();
    let (interpreter, script) = (interpreter.to_owned(), script.to_owned());
    let run = move |args: &[&str]| {
        let mut all = vec![script.as_str(), port.as_str(), path(&pki.ca)];
        all.extend_from_slice(args);
        program(&interpreter, &all)
    };
    let cert = pki.tls_client();
    let with_cert = |mechanism| [mechanism, path(&cert.cert), path(&cert.key)];
    assert_eq!(
        run(&["plain"]),
        "connected with PLAIN\ngot: hello over amqps\n"
    );
    assert_eq!(
        run(&with_cert("plain")),
        "connected with PLAIN\ngot: hello over amqps\n"
    );
    assert_eq!(
        run(&with_cert("external")),
        "connected with EXTERNAL\ngot: hello over amqps\n"
    );
    run
}

#[test]
fn pika_over_amqps() {
    if !support::interop("pika_over_amqps") {
        return;
    }
    let ports = Ports::take();
    let pki = Pki::new("pika");
    let _b = interop_broker(&ports, &pki);
    let run = client_over_amqps("python3", "pika_tls.py", &ports, &pki);
    // A certificate naming no user: pika reports the refusal.
    let stranger = pki.client("stranger", None, "stranger");
    let out = run(&["external", path(&stranger.cert), path(&stranger.key)]);
    assert!(out.starts_with("refused: "), "{out}");
}

#[test]
fn amqplib_over_amqps() {
    if !support::interop("amqplib_over_amqps") {
        return;
    }
    let ports = Ports::take();
    let pki = Pki::new("amqplib");
    let _b = interop_broker(&ports, &pki);
    let _run = client_over_amqps("node", "amqplib_tls.js", &ports, &pki);
}
