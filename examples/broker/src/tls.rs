//! TLS (`amqps://`) with rustls on the `ring` provider: the listener's
//! settings, loading and reloading the certificate files, and the client
//! certificate's identity for SASL `EXTERNAL`.
//!
//! As RabbitMQ's `rabbitmq_auth_mechanism_ssl`, the identity is the
//! certificate subject's distinguished name in the RFC 4514 form RabbitMQ
//! prints (`rabbit_ssl:peer_cert_subject`): the RDNs last first, joined
//! with `,` (several values of one RDN with `+`), the attribute names
//! `CN`, `O`, `OU`, `C`, `L`, `ST`, `DC`, `UID`, `EMAILADDRESS`... (others
//! as a dotted OID), values escaped as RabbitMQ escapes them — for
//! example `CN=client,O=Example,C=UK`. With
//! `ssl_cert_login_from = common_name` it is the subject's common name
//! (several joined with `,`).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How long a TLS handshake may take before the connection is cut
/// (RabbitMQ's `ssl_handshake_timeout` is 5 s, its AMQP handshake's 10 s).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What names a user of a client certificate (RabbitMQ's
/// `ssl_cert_login_from`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoginFrom {
    /// The subject's full distinguished name (the default).
    #[default]
    DistinguishedName,
    /// The subject's common name.
    CommonName,
}

impl LoginFrom {
    /// Parses `distinguished_name` or `common_name`.
    pub fn parse(s: &str) -> Result<LoginFrom, String> {
        match s {
            "distinguished_name" => Ok(LoginFrom::DistinguishedName),
            "common_name" => Ok(LoginFrom::CommonName),
            other => Err(format!(
                "ssl_cert_login_from '{other}': give distinguished_name or common_name"
            )),
        }
    }
}

/// The TLS listener's settings, from the `[tls]` section of the config
/// file and the `--tls-*` flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The server's certificate chain, PEM (leaf first).
    pub cert: PathBuf,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM) that client certificates are verified
    /// against; set, the broker asks for a client certificate
    /// (`verify_peer`).
    pub ca: Option<PathBuf>,
    /// Refuse the handshake of a client without a certificate
    /// (RabbitMQ's `fail_if_no_peer_cert`; needs `ca`).
    pub fail_if_no_peer_cert: bool,
    /// How a client certificate names its user for `EXTERNAL`.
    pub login_from: LoginFrom,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
}

/// A flag's and a config key's names, for error messages.
fn origin(what: &str) -> &'static str {
    match what {
        "certificate" => "--tls-cert or cert in [tls]",
        "key" => "--tls-key or key in [tls]",
        _ => "--tls-ca or ca in [tls]",
    }
}

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let text = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the TLS {what} file {} ({}): {e}",
            path.display(),
            origin(what)
        )
    })?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            format!(
                "the TLS {what} file {} ({}): {e}",
                path.display(),
                origin(what)
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "the TLS {what} file {} ({}) holds no PEM CERTIFICATE block",
            path.display(),
            origin(what)
        ));
    }
    Ok(certs)
}

/// Builds the rustls configuration these settings describe; errors name
/// the file and the flag or key that gave it.
pub fn server_config(s: &Settings) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(&s.cert, "certificate")?;
    let key_text = std::fs::read(&s.key).map_err(|e| {
        format!(
            "cannot read the TLS key file {} ({}): {e}",
            s.key.display(),
            origin("key")
        )
    })?;
    let key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
        format!(
            "no private key in the TLS key file {} ({}): {e} (expected a PEM PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block)",
            s.key.display(),
            origin("key")
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?;
    let builder = match &s.ca {
        None => {
            if s.fail_if_no_peer_cert {
                return Err(
                    "fail_if_no_peer_cert needs CA certificates to verify clients with (--tls-ca or ca in [tls])"
                        .into(),
                );
            }
            builder.with_no_client_auth()
        }
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(ca, "CA")? {
                roots.add(c).map_err(|e| {
                    format!("the TLS CA file {} ({}): {e}", ca.display(), origin("CA"))
                })?;
            }
            let mut v =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider);
            if !s.fail_if_no_peer_cert {
                v = v.allow_unauthenticated();
            }
            let v = v
                .build()
                .map_err(|e| format!("the TLS CA file {} ({}): {e}", ca.display(), origin("CA")))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        format!(
            "the TLS certificate {} and key {} do not make a usable pair: {e} (the key must be the certificate's)",
            s.cert.display(),
            s.key.display()
        )
    })?;
    Ok(Arc::new(config))
}

/// The TLS listener's state: its settings and the configuration in use,
/// which [`Tls::reload`] replaces (connections keep the one they started
/// with).
#[derive(Debug)]
pub struct Tls {
    settings: Settings,
    config: RwLock<Arc<rustls::ServerConfig>>,
}

impl Tls {
    /// Loads the files the settings name.
    pub fn new(settings: Settings) -> Result<Arc<Tls>, String> {
        let config = server_config(&settings)?;
        Ok(Arc::new(Tls {
            settings,
            config: RwLock::new(config),
        }))
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The configuration new connections get.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads the certificate, key and CA files again (SIGHUP); on an error
    /// the configuration in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = server_config(&self.settings)?;
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// The `EXTERNAL` identity of a verified client certificate (DER), as
    /// the settings say; `None` if the certificate cannot be read or has
    /// no common name when one is wanted.
    pub fn identity(&self, cert: &[u8]) -> Option<String> {
        certificate_identity(cert, self.settings.login_from)
    }
}

/// What the management API shows of a TLS connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// `tlsv1.3` or `tlsv1.2` (RabbitMQ's `ssl_protocol`).
    pub protocol: &'static str,
    /// The cipher suite, as rustls names it (`TLS13_AES_256_GCM_SHA384`).
    pub cipher: String,
    /// The client certificate's subject, as [`certificate_identity`]
    /// prints a distinguished name.
    pub peer_cert_subject: Option<String>,
    /// Its issuer, the same way.
    pub peer_cert_issuer: Option<String>,
}

impl Session {
    /// The session of an accepted connection.
    pub fn of(conn: &rustls::ServerConnection) -> Session {
        let protocol = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "tlsv1.2",
            _ => "tlsv1.3",
        };
        let cipher = conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        let cert = conn.peer_certificates().and_then(|c| c.first());
        Session {
            protocol,
            cipher,
            peer_cert_subject: cert.and_then(|c| names(c).map(|(_, s)| format_dn(&s))),
            peer_cert_issuer: cert.and_then(|c| names(c).map(|(i, _)| format_dn(&i))),
        }
    }
}

// ----- the subject of an X.509 certificate ---------------------------------

/// One attribute of a distinguished name: its OID (DER content bytes),
/// the value's tag and the value's content bytes.
type Attribute<'a> = (&'a [u8], u8, &'a [u8]);

/// Reads one DER element: its tag, its content and what follows.
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None; // high tag numbers: not in a certificate's subject
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// A distinguished name's RDNs, in certificate order.
type Name<'a> = Vec<Vec<Attribute<'a>>>;

/// The issuer's and the subject's names.
fn names(cert: &[u8]) -> Option<(Name<'_>, Name<'_>)> {
    let (0x30, cert, _) = tlv(cert)? else {
        return None;
    };
    let (0x30, tbs, _) = tlv(cert)? else {
        return None;
    };
    let mut rest = tbs;
    if let (0xa0, _, after) = tlv(rest)? {
        rest = after; // the version
    }
    // The serial number and signature algorithm, then the issuer, the
    // validity and the subject.
    for _ in 0..2 {
        (_, _, rest) = tlv(rest)?;
    }
    let (0x30, issuer, rest) = tlv(rest)? else {
        return None;
    };
    let (_, _, rest) = tlv(rest)?;
    let (0x30, subject, _) = tlv(rest)? else {
        return None;
    };
    Some((name(issuer)?, name(subject)?))
}

/// The subject's RDNs, in certificate order.
fn subject(cert: &[u8]) -> Option<Name<'_>> {
    names(cert).map(|(_, s)| s)
}

/// Reads a Name's content: a sequence of RDN sets.
fn name(mut name: &[u8]) -> Option<Name<'_>> {
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (0x31, mut set, next) = tlv(name)? else {
            return None;
        };
        name = next;
        let mut rdn = Vec::new();
        while !set.is_empty() {
            let (0x30, atv, next) = tlv(set)? else {
                return None;
            };
            set = next;
            let (0x06, oid, value) = tlv(atv)? else {
                return None;
            };
            let (vtag, value, _) = tlv(value)?;
            rdn.push((oid, vtag, value));
        }
        rdns.push(rdn);
    }
    Some(rdns)
}

/// The short names RabbitMQ prints (`rabbit_ssl`), by OID content bytes.
fn attribute_name(oid: &[u8]) -> Option<&'static str> {
    const DC: &[u8] = &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19];
    const UID: &[u8] = &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01];
    const EMAIL: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01];
    match oid {
        [0x55, 0x04, n] => Some(match n {
            3 => "CN",
            4 => "SN",
            5 => "SERIALNUMBER",
            6 => "C",
            7 => "L",
            8 => "ST",
            9 => "STREET",
            10 => "O",
            11 => "OU",
            12 => "TITLE",
            42 => "GIVENNAME",
            43 => "INITIALS",
            44 => "GENERATIONQUALIFIER",
            65 => "PSEUDONYM",
            _ => return None,
        }),
        DC => Some("DC"),
        UID => Some("UID"),
        EMAIL => Some("EMAILADDRESS"),
        _ => None,
    }
}

/// An OID in dotted decimal (RFC 4514 for types without a short name).
fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut v: u64 = 0;
    for &b in oid {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let (a, b) = if v < 80 {
                    (v / 40, v % 40)
                } else {
                    (2, v - 80)
                };
                arcs.extend([a, b]);
            } else {
                arcs.push(v);
            }
            v = 0;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// A directory string's text (UTF-8, printable, IA5, visible, teletex as
/// Latin-1, BMP as UCS-2, universal as UCS-4); other types as `#` and the
/// hex of their content.
fn value_text(tag: u8, v: &[u8]) -> String {
    match tag {
        0x0c | 0x13 | 0x16 | 0x1a => String::from_utf8_lossy(v).into_owned(),
        0x14 => v.iter().map(|&b| char::from(b)).collect(),
        0x1e => char::decode_utf16(
            v.chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])),
        )
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        0x1c => v
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                char::from_u32(u32::from_be_bytes(b)).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        _ => {
            let mut s = String::from("#");
            for b in v {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
    }
}

/// Escapes a value as RabbitMQ does: a leading space or `#` and a
/// trailing space with `\`, the characters `"+,;<>\` with `\`, and every
/// byte of the UTF-8 text below 32 or from 126 up as `\XX`.
fn escape(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for (i, &b) in bytes.iter().enumerate() {
        let first = i == 0;
        let last = i + 1 == bytes.len();
        let special = matches!(b, b'"' | b'+' | b',' | b';' | b'<' | b'>' | b'\\');
        if special || (first && (b == b' ' || b == b'#')) || (last && b == b' ') {
            out.push('\\');
            out.push(char::from(b));
        } else if !(32..126).contains(&b) {
            out.push_str(&format!("\\{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// The distinguished name as RabbitMQ prints it.
fn format_dn(rdns: &[Vec<Attribute<'_>>]) -> String {
    rdns.iter()
        .rev()
        .map(|rdn| {
            rdn.iter()
                .map(|(oid, tag, v)| {
                    let name = attribute_name(oid).map_or_else(|| dotted(oid), str::to_owned);
                    format!("{name}={}", escape(&value_text(*tag, v)))
                })
                .collect::<Vec<_>>()
                .join("+")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The common names, in certificate order, joined with `,`.
fn common_name(rdns: &[Vec<Attribute<'_>>]) -> Option<String> {
    let names: Vec<String> = rdns
        .iter()
        .flatten()
        .filter(|(oid, _, _)| *oid == [0x55, 0x04, 3])
        .map(|(_, tag, v)| value_text(*tag, v))
        .collect();
    (!names.is_empty()).then(|| names.join(","))
}

/// The identity of a client certificate (DER) by `from`, without a
/// [`Tls`] (tests, tools).
pub fn certificate_identity(cert: &[u8], from: LoginFrom) -> Option<String> {
    let subject = subject(cert)?;
    match from {
        LoginFrom::DistinguishedName => Some(format_dn(&subject)),
        LoginFrom::CommonName => common_name(&subject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    fn cert(dn: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in dn {
            p.distinguished_name.push(t.clone(), v.clone());
        }
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn distinguished_name_as_rabbitmq_prints_it() {
        let der = cert(&[
            (
                DnType::CountryName,
                DnValue::PrintableString("UK".try_into().unwrap()),
            ),
            (DnType::OrganizationName, "Example, Inc.".into()),
            (DnType::CommonName, "#client <1> ".into()),
        ]);
        assert_eq!(
            certificate_identity(&der, LoginFrom::DistinguishedName).unwrap(),
            "CN=\\#client \\<1\\>\\ ,O=Example\\, Inc.,C=UK"
        );
        assert_eq!(
            certificate_identity(&der, LoginFrom::CommonName).unwrap(),
            "#client <1> "
        );
        let der = cert(&[
            (DnType::CustomDnType(vec![2, 5, 4, 97]), "org-id".into()),
            (DnType::CommonName, "Zoë".into()),
        ]);
        assert_eq!(
            certificate_identity(&der, LoginFrom::DistinguishedName).unwrap(),
            "CN=Zo\\C3\\AB,2.5.4.97=org-id"
        );
        let der = cert(&[(DnType::OrganizationName, "no cn".into())]);
        assert_eq!(certificate_identity(&der, LoginFrom::CommonName), None);
        assert_eq!(
            certificate_identity(&der, LoginFrom::DistinguishedName).unwrap(),
            "O=no cn"
        );
    }

    #[test]
    fn garbage_is_no_identity() {
        assert_eq!(
            certificate_identity(b"", LoginFrom::DistinguishedName),
            None
        );
        assert_eq!(
            certificate_identity(&[0x30, 0x82, 0xff, 0xff, 0], LoginFrom::DistinguishedName),
            None
        );
        let der = cert(&[(DnType::CommonName, "x".into())]);
        for n in 0..der.len() {
            // Truncations never panic.
            let _ = certificate_identity(&der[..n], LoginFrom::DistinguishedName);
        }
    }

    /// Drives a client with EXTERNAL against the core, whose connection
    /// has this certificate identity; returns whether it connected.
    fn external_login(identity: Option<&str>, loopback: bool) -> bool {
        use crate::core::{Core, CoreConfig, Out, Peer};
        use amqp_codec::{ClientConfig, Connection, Credentials, Event, ServerConfig};
        let now = std::time::Instant::now();
        let mut core = Core::new(CoreConfig::default());
        core.connect(
            1,
            Peer {
                loopback,
                tls_identity: identity.map(str::to_owned),
                tls: None,
            },
        );
        let config = ClientConfig {
            credentials: Credentials::External {
                identity: String::new(),
            },
            ..ClientConfig::default()
        };
        let mut client = Connection::client(config, now);
        let mut server = Connection::server(ServerConfig::default(), now);
        for _ in 0..10 {
            while let Some(b) = client.poll_transmit() {
                server.handle_input(b);
            }
            let events: Vec<Event> = std::iter::from_fn(|| server.poll_event()).collect();
            core.handle(1, events, now);
            for out in core.take_outbox(1) {
                if let Out::Decide { id, answer } = out {
                    server.decide(id, answer).unwrap();
                }
            }
            while let Some(b) = server.poll_transmit() {
                client.handle_input(b);
            }
        }
        std::iter::from_fn(|| client.poll_event()).any(|e| matches!(e, Event::Connected { .. }))
    }

    #[test]
    fn external_logs_in_the_certificate_user_only() {
        assert!(external_login(Some("guest"), true));
        // guest stays a loopback user, certificate or not.
        assert!(!external_login(Some("guest"), false));
        assert!(!external_login(Some("CN=nobody"), true));
        assert!(!external_login(None, true));
    }

    #[test]
    fn oids_in_dotted_decimal() {
        assert_eq!(dotted(&[0x55, 0x04, 0x61]), "2.5.4.97");
        assert_eq!(
            dotted(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
            "1.2.840.113549.1.9.1"
        );
        assert_eq!(
            attribute_name(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
            Some("EMAILADDRESS")
        );
    }

    #[test]
    fn errors_name_the_file_and_the_flag() {
        let s = Settings {
            cert: "/nonexistent/cert.pem".into(),
            key: "/nonexistent/key.pem".into(),
            ca: None,
            fail_if_no_peer_cert: false,
            login_from: LoginFrom::default(),
            handshake_timeout: HANDSHAKE_TIMEOUT,
        };
        let e = server_config(&s).unwrap_err();
        assert!(
            e.contains("/nonexistent/cert.pem") && e.contains("--tls-cert"),
            "{e}"
        );
        assert!(LoginFrom::parse("cn").unwrap_err().contains("common_name"));
    }
}
