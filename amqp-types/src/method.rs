//! The 66 methods of AMQP 0-9-1, generated from [`for_each_method!`](crate::for_each_method).
//!
//! One struct per method (`BasicPublish`, `QueueDeclareOk`, ...), the
//! [`Method`] enum that holds any of them, the fieldless [`MethodKind`], and
//! [`MethodInfo`]: the protocol metadata a connection needs (synchronous or
//! not, which methods answer, content, the `nowait` bit, who may send it).

use crate::{FieldTable, LongString, ShortString};
use std::fmt;

/// Who may send a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Sender {
    /// Only the client.
    Client,
    /// Only the server.
    Server,
    /// Either peer.
    Both,
}

impl Sender {
    /// Whether a client may send the method.
    pub const fn client(self) -> bool {
        matches!(self, Sender::Client | Sender::Both)
    }
    /// Whether a server may send the method.
    pub const fn server(self) -> bool {
        matches!(self, Sender::Server | Sender::Both)
    }
}

/// The wire type of a method argument (a spec "domain" resolved to its
/// primitive type).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
#[non_exhaustive]
pub enum Domain {
    /// `octet`: `u8`.
    Octet,
    /// `short`: `u16`.
    Short,
    /// `long`: `u32`.
    Long,
    /// `longlong` (and `timestamp`): `u64`.
    LongLong,
    /// `bit`: `bool`, packed with its neighbours.
    Bit,
    /// `shortstr`: [`ShortString`].
    ShortStr,
    /// `longstr`: [`LongString`].
    LongStr,
    /// `table`: [`FieldTable`].
    Table,
}

impl Domain {
    /// The spec's name of the primitive type (`"shortstr"`, `"bit"`, ...).
    pub const fn spec_name(self) -> &'static str {
        match self {
            Domain::Octet => "octet",
            Domain::Short => "short",
            Domain::Long => "long",
            Domain::LongLong => "longlong",
            Domain::Bit => "bit",
            Domain::ShortStr => "shortstr",
            Domain::LongStr => "longstr",
            Domain::Table => "table",
        }
    }
}

/// One argument of a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FieldInfo {
    /// The spec's name (`"routing-key"`).
    pub name: &'static str,
    /// The Rust field name (`"routing_key"`).
    pub rust_name: &'static str,
    /// The wire type.
    pub domain: Domain,
}

/// Protocol metadata of one method, from the protocol table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MethodInfo {
    /// Which method.
    pub kind: MethodKind,
    /// Class id.
    pub class_id: u16,
    /// Method id within the class.
    pub method_id: u16,
    /// `"class.method"` as the spec spells it (`"basic.get-ok"`).
    pub name: &'static str,
    /// Who may send it.
    pub sender: Sender,
    /// Whether a content header and body frames follow it.
    pub has_content: bool,
    /// The methods that answer it as a synchronous request (empty if it is
    /// asynchronous or a reply itself).
    pub replies: &'static [MethodKind],
    /// The spec name of its `nowait` bit, if it has one.
    pub nowait_field: Option<&'static str>,
    /// Its arguments, in wire order.
    pub fields: &'static [FieldInfo],
}

impl MethodInfo {
    /// Whether the method is a synchronous request (expects a reply unless
    /// its `nowait` bit is set).
    pub const fn synchronous(&self) -> bool {
        !self.replies.is_empty()
    }

    /// The most bytes its method payload (class and method ids, then the
    /// arguments) can take on the wire, or `None` when an argument is a
    /// `longstr` or a `table` (no bound short of 4 GiB). An encoder can
    /// skip measuring a method that is sure to fit.
    ///
    /// ```
    /// use amqp_types::method::MethodKind;
    /// // delivery tag (8) and the packed `multiple` bit (1), after the ids
    /// assert_eq!(MethodKind::BasicAck.info().max_payload_len(), Some(4 + 8 + 1));
    /// assert_eq!(MethodKind::QueueDeclare.info().max_payload_len(), None);
    /// ```
    pub const fn max_payload_len(&self) -> Option<usize> {
        let mut n = 4;
        let mut i = 0;
        let mut bits = 0;
        while i < self.fields.len() {
            let d = self.fields[i].domain;
            if !matches!(d, Domain::Bit) {
                bits = 0;
            }
            n += match d {
                Domain::Octet => 1,
                Domain::Short => 2,
                Domain::Long => 4,
                Domain::LongLong => 8,
                // Up to 8 neighbouring bits share an octet.
                Domain::Bit => {
                    bits += 1;
                    if bits % 8 == 1 { 1 } else { 0 }
                }
                Domain::ShortStr => 256,
                Domain::LongStr | Domain::Table => return None,
            };
            i += 1;
        }
        Some(n)
    }
}

#[doc(hidden)]
#[macro_export]
macro_rules! __domain_of {
    (u8) => {
        $crate::method::Domain::Octet
    };
    (u16) => {
        $crate::method::Domain::Short
    };
    (u32) => {
        $crate::method::Domain::Long
    };
    (u64) => {
        $crate::method::Domain::LongLong
    };
    (bool) => {
        $crate::method::Domain::Bit
    };
    (ShortString) => {
        $crate::method::Domain::ShortStr
    };
    (LongString) => {
        $crate::method::Domain::LongStr
    };
    (FieldTable) => {
        $crate::method::Domain::Table
    };
}

macro_rules! sender_of {
    (client) => {
        Sender::Client
    };
    (server) => {
        Sender::Server
    };
    (both) => {
        Sender::Both
    };
}

macro_rules! opt_name {
    () => {
        None
    };
    ($n:ident) => {
        Some(stringify!($n))
    };
}

macro_rules! content_of {
    (content) => {
        true
    };
    (no_content) => {
        false
    };
}

macro_rules! define_methods {
    ($(
        $Name:ident ($cid:literal, $mid:literal, $name:literal, $from:ident, $content:ident,
                     [$($reply:ident),*], [$($nw:ident)?])
        { $( $f:ident : $ty:ident = $fname:literal ),* $(,)? }
    )*) => {
        $(
            #[doc = concat!("`", $name, "` (class ", stringify!($cid), ", method ", stringify!($mid), ").")]
            #[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
            #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
            pub struct $Name {
                $(
                    #[doc = concat!("The `", $fname, "` argument.")]
                    pub $f: $ty,
                )*
            }

            impl $Name {
                /// The class id.
                pub const CLASS_ID: u16 = $cid;
                /// The method id.
                pub const METHOD_ID: u16 = $mid;
                /// The spec name, `"class.method"`.
                pub const NAME: &'static str = $name;
                /// The method's kind.
                pub const KIND: MethodKind = MethodKind::$Name;
            }

            impl From<$Name> for Method {
                fn from(m: $Name) -> Method {
                    Method::$Name(m)
                }
            }
        )*

        /// Any AMQP 0-9-1 method with its arguments.
        ///
        /// `Debug` prints the spec name first: `basic.ack(BasicAck { .. })`.
        #[derive(Clone, PartialEq, Eq, Hash)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[non_exhaustive]
        pub enum Method {
            $(
                #[doc = concat!("`", $name, "`.")]
                $Name($Name),
            )*
        }

        /// Which method, without its arguments.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
        #[non_exhaustive]
        pub enum MethodKind {
            $(
                #[doc = concat!("`", $name, "`.")]
                $Name,
            )*
        }

        impl MethodKind {
            /// Every method, in table order.
            pub const ALL: &'static [MethodKind] = &[$(MethodKind::$Name),*];

            /// The method with these ids, if any.
            #[inline]
            pub const fn from_ids(class_id: u16, method_id: u16) -> Option<MethodKind> {
                match (class_id, method_id) {
                    $( ($cid, $mid) => Some(MethodKind::$Name), )*
                    _ => None,
                }
            }

            /// [`MethodInfo::max_payload_len`], computed at compile time:
            /// a sender checking each frame against frame_max need not
            /// add up the arguments at run time.
            ///
            /// ```
            /// use amqp_types::method::MethodKind;
            /// for &kind in MethodKind::ALL {
            ///     assert_eq!(kind.max_payload_len(), kind.info().max_payload_len());
            /// }
            /// ```
            #[inline]
            pub const fn max_payload_len(self) -> Option<usize> {
                match self {
                    $(
                        MethodKind::$Name => {
                            const N: Option<usize> = MethodKind::$Name.info().max_payload_len();
                            N
                        }
                    )*
                }
            }

            /// The method's protocol metadata.
            pub const fn info(self) -> &'static MethodInfo {
                match self {
                    $(
                        MethodKind::$Name => &MethodInfo {
                            kind: MethodKind::$Name,
                            class_id: $cid,
                            method_id: $mid,
                            name: $name,
                            sender: sender_of!($from),
                            has_content: content_of!($content),
                            replies: &[$(MethodKind::$reply),*],
                            nowait_field: opt_name!($($nw)?),
                            fields: &[$(
                                FieldInfo {
                                    name: $fname,
                                    rust_name: stringify!($f),
                                    domain: $crate::__domain_of!($ty),
                                },
                            )*],
                        },
                    )*
                }
            }
        }

        impl Method {
            /// Which method this is.
            #[inline]
            pub const fn kind(&self) -> MethodKind {
                match self {
                    $( Method::$Name(_) => MethodKind::$Name, )*
                }
            }

            /// Whether this request expects a reply: it is synchronous and,
            /// if it has a `nowait` bit, that bit is clear.
            pub fn expects_reply(&self) -> bool {
                match self {
                    $(
                        #[allow(unused_variables)]
                        Method::$Name(m) => {
                            !MethodKind::$Name.info().replies.is_empty()
                                $( && !m.$nw )?
                        }
                    )*
                }
            }

            /// The value of the `nowait` bit, or `false` if the method has none.
            pub fn nowait(&self) -> bool {
                match self {
                    $(
                        #[allow(unused_variables)]
                        Method::$Name(m) => { false $( || m.$nw )? }
                    )*
                }
            }
        }

        impl fmt::Debug for Method {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self {
                    $( Method::$Name(m) => f.debug_tuple($name).field(m).finish(), )*
                }
            }
        }
    };
}

crate::for_each_method!(define_methods);

impl MethodKind {
    /// The class id.
    pub const fn class_id(self) -> u16 {
        self.info().class_id
    }
    /// The method id.
    pub const fn method_id(self) -> u16 {
        self.info().method_id
    }
    /// The spec name, `"class.method"`.
    pub const fn name(self) -> &'static str {
        self.info().name
    }
    /// Whether content (header and body frames) follows the method.
    pub const fn has_content(self) -> bool {
        self.info().has_content
    }
    /// Whether the method is a synchronous request.
    pub const fn synchronous(self) -> bool {
        self.info().synchronous()
    }
    /// Whether the method is a reply to some synchronous request.
    pub fn is_reply(self) -> bool {
        MethodKind::ALL
            .iter()
            .any(|k| k.info().replies.contains(&self))
    }
    /// Whether `reply` answers this request.
    pub fn is_answered_by(self, reply: MethodKind) -> bool {
        self.info().replies.contains(&reply)
    }
}

impl fmt::Display for MethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Method {
    /// The method's protocol metadata.
    pub const fn info(&self) -> &'static MethodInfo {
        self.kind().info()
    }
    /// The class id.
    pub const fn class_id(&self) -> u16 {
        self.info().class_id
    }
    /// The method id.
    pub const fn method_id(&self) -> u16 {
        self.info().method_id
    }
    /// The spec name, `"class.method"`.
    pub const fn name(&self) -> &'static str {
        self.info().name
    }
    /// Whether content follows the method.
    pub const fn has_content(&self) -> bool {
        self.info().has_content
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        assert_eq!(MethodKind::ALL.len(), 66);
        for &k in MethodKind::ALL {
            let i = k.info();
            assert_eq!(i.kind, k);
            assert_eq!(MethodKind::from_ids(i.class_id, i.method_id), Some(k));
            for r in i.replies {
                assert_eq!(r.class_id(), i.class_id, "{k} answered across classes");
                assert!(r.is_reply());
            }
            if let Some(nw) = i.nowait_field {
                assert!(i.synchronous());
                assert!(
                    i.fields
                        .iter()
                        .any(|f| f.name == nw && f.domain == Domain::Bit)
                );
            }
        }
        assert_eq!(
            MethodKind::BasicGet.info().replies,
            &[MethodKind::BasicGetOk, MethodKind::BasicGetEmpty]
        );
        assert!(MethodKind::BasicPublish.has_content());
        assert_eq!(MethodKind::from_ids(60, 999), None);
    }

    #[test]
    fn nowait_and_expects_reply() {
        let mut d = QueueDeclare::default();
        assert!(Method::from(d.clone()).expects_reply());
        d.nowait = true;
        let m = Method::from(d);
        assert!(m.nowait());
        assert!(!m.expects_reply());
        assert!(!Method::from(BasicAck::default()).expects_reply());
        assert_eq!(
            format!("{:?}", Method::from(TxSelect {})),
            "tx.select(TxSelect)"
        );
    }
}
