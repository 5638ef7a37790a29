//! SASL mechanisms as AMQP uses them: PLAIN, AMQPLAIN and EXTERNAL.

use amqp_types::{FieldTable, FieldValue, LongString, ShortString};
use bytes::{BufMut, Bytes, BytesMut};

/// Credentials a client presents, or a server received.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// `PLAIN`: `\0user\0password`.
    Plain {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `AMQPLAIN`: a field table (without its length) with `LOGIN` and
    /// `PASSWORD`.
    AmqPlain {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// `EXTERNAL`: identity from outside AMQP (a TLS client certificate);
    /// the response is empty or an authorisation identity.
    External {
        /// The authorisation identity, often empty.
        identity: String,
    },
    /// Any other mechanism, with its raw response.
    Other {
        /// The mechanism name.
        mechanism: ShortString,
        /// The raw response.
        response: Bytes,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::Plain { username, .. } => {
                write!(f, "Plain {{ username: {username:?}, password: <hidden> }}")
            }
            Credentials::AmqPlain { username, .. } => {
                write!(
                    f,
                    "AmqPlain {{ username: {username:?}, password: <hidden> }}"
                )
            }
            Credentials::External { identity } => write!(f, "External {{ {identity:?} }}"),
            Credentials::Other {
                mechanism,
                response,
            } => {
                write!(f, "Other {{ {mechanism:?}, {} bytes }}", response.len())
            }
        }
    }
}

impl Credentials {
    /// PLAIN credentials.
    pub fn plain(username: impl Into<String>, password: impl Into<String>) -> Self {
        Credentials::Plain {
            username: username.into(),
            password: password.into(),
        }
    }

    /// The mechanism name.
    pub fn mechanism(&self) -> ShortString {
        match self {
            Credentials::Plain { .. } => ShortString::from_static("PLAIN"),
            Credentials::AmqPlain { .. } => ShortString::from_static("AMQPLAIN"),
            Credentials::External { .. } => ShortString::from_static("EXTERNAL"),
            Credentials::Other { mechanism, .. } => mechanism.clone(),
        }
    }

    /// The user name, if the mechanism carries one.
    pub fn username(&self) -> Option<&str> {
        match self {
            Credentials::Plain { username, .. } | Credentials::AmqPlain { username, .. } => {
                Some(username)
            }
            Credentials::External { identity } => Some(identity),
            Credentials::Other { .. } => None,
        }
    }

    /// The password, if the mechanism carries one.
    pub fn password(&self) -> Option<&str> {
        match self {
            Credentials::Plain { password, .. } | Credentials::AmqPlain { password, .. } => {
                Some(password)
            }
            _ => None,
        }
    }

    /// The `response` of `connection.start-ok`.
    pub fn response(&self) -> LongString {
        match self {
            Credentials::Plain { username, password } => {
                let mut b = BytesMut::with_capacity(username.len() + password.len() + 2);
                b.put_u8(0);
                b.put_slice(username.as_bytes());
                b.put_u8(0);
                b.put_slice(password.as_bytes());
                LongString::new(b.freeze())
            }
            Credentials::AmqPlain { username, password } => {
                let mut t = FieldTable::new();
                if let (Ok(k1), Ok(k2)) = (
                    ShortString::try_from("LOGIN"),
                    ShortString::try_from("PASSWORD"),
                ) {
                    t.push(
                        k1,
                        FieldValue::LongString(LongString::from(username.as_str())),
                    );
                    t.push(
                        k2,
                        FieldValue::LongString(LongString::from(password.as_str())),
                    );
                }
                let mut b = BytesMut::new();
                // Encoding two short strings cannot fail.
                let _ = amqp_wire::encode_field_table(&t, &mut b);
                // AMQPLAIN's response is the table without its length.
                LongString::new(b.freeze().slice(4..))
            }
            Credentials::External { identity } => LongString::from(identity.as_str()),
            Credentials::Other { response, .. } => LongString::new(response.clone()),
        }
    }

    /// Reads a `start-ok` (or `secure-ok`) response for `mechanism`. A
    /// response that does not parse for a known mechanism is returned as
    /// [`Credentials::Other`], for the embedder to refuse.
    pub fn parse(mechanism: &[u8], response: &[u8]) -> Credentials {
        let other = || Credentials::Other {
            mechanism: ShortString::from_bytes(mechanism).unwrap_or_default(),
            response: Bytes::copy_from_slice(response),
        };
        match mechanism {
            b"PLAIN" => {
                let mut parts = response.split(|b| *b == 0);
                let (Some(_authzid), Some(user), Some(pass), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return other();
                };
                match (std::str::from_utf8(user), std::str::from_utf8(pass)) {
                    (Ok(u), Ok(p)) => Credentials::plain(u, p),
                    _ => other(),
                }
            }
            b"AMQPLAIN" => {
                let mut framed = BytesMut::with_capacity(response.len() + 4);
                framed.put_u32(response.len() as u32);
                framed.put_slice(response);
                let Ok(t) = amqp_wire::decode_field_table(&framed.freeze()) else {
                    return other();
                };
                let s = |k: &str| match t.get(k) {
                    Some(FieldValue::LongString(s)) => s.as_str().map(str::to_owned),
                    _ => None,
                };
                match (s("LOGIN"), s("PASSWORD")) {
                    (Some(username), Some(password)) => {
                        Credentials::AmqPlain { username, password }
                    }
                    _ => other(),
                }
            }
            b"EXTERNAL" => match std::str::from_utf8(response) {
                Ok(identity) => Credentials::External {
                    identity: identity.to_owned(),
                },
                Err(_) => other(),
            },
            _ => other(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for c in [
            Credentials::plain("guest", "guest"),
            Credentials::AmqPlain {
                username: "u".into(),
                password: "p".into(),
            },
            Credentials::External {
                identity: String::new(),
            },
        ] {
            let r = c.response();
            assert_eq!(Credentials::parse(c.mechanism().as_bytes(), &r), c);
        }
        assert_eq!(
            Credentials::plain("guest", "guest").response().as_bytes(),
            b"\0guest\0guest"
        );
        assert!(matches!(
            Credentials::parse(b"PLAIN", b"nonul"),
            Credentials::Other { .. }
        ));
        assert!(matches!(
            Credentials::parse(b"AMQPLAIN", b"\x05LOGINS\xff\xff\xff\xff"),
            Credentials::Other { .. }
        ));
    }
}
