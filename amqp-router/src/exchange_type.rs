//! Pluggable exchange types.

use amqp_types::{FieldArray, FieldTable, FieldValue};

/// A binding's id inside one [`Router`](crate::Router): stable while the
/// binding exists, reused after it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BindingId(pub(crate) u32);

impl BindingId {
    /// The id as an index (dense, starting at 0), for side tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// A message as exchange types see it: its routing keys (the publish's
/// key, then the long strings of its `CC` and `BCC` headers) and headers.
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    pub(crate) routing_key: &'a [u8],
    pub(crate) cc: Option<&'a FieldArray>,
    pub(crate) bcc: Option<&'a FieldArray>,
    pub(crate) headers: Option<&'a FieldTable>,
}

impl<'a> Message<'a> {
    /// The routing key given to `basic.publish`.
    pub fn routing_key(&self) -> &'a [u8] {
        self.routing_key
    }

    /// Every routing key: the publish's, then each long-string element of
    /// the `CC` and `BCC` header arrays (sender-selected distribution).
    pub fn routing_keys(&self) -> impl Iterator<Item = &'a [u8]> + 'a {
        let extra = |a: Option<&'a FieldArray>| {
            a.into_iter().flat_map(|a| {
                a.iter().filter_map(|v| match v {
                    FieldValue::LongString(s) => Some(s.as_bytes()),
                    _ => None,
                })
            })
        };
        std::iter::once(self.routing_key)
            .chain(extra(self.cc))
            .chain(extra(self.bcc))
    }

    /// The message's headers property, if it has one.
    pub fn headers(&self) -> Option<&'a FieldTable> {
        self.headers
    }
}

/// An exchange type an embedder adds to a [`Router`](crate::Router) with
/// [`Router::register_exchange_type`](crate::Router::register_exchange_type),
/// e.g. a consistent-hash exchange. The router keeps the bindings, their
/// identity and lifecycle; the type decides which of them a message matches.
pub trait ExchangeType: Send + Sync {
    /// The type's name as `exchange.declare` gives it (`"x-consistent-hash"`).
    fn name(&self) -> &str;

    /// Checks a new binding's key and arguments; an `Err` is refused with
    /// 406 PRECONDITION_FAILED and the text.
    fn validate_binding(&self, routing_key: &[u8], arguments: &FieldTable) -> Result<(), String> {
        let _ = (routing_key, arguments);
        Ok(())
    }

    /// A new, empty index for one exchange of this type.
    fn new_index(&self, exchange_arguments: &FieldTable) -> Box<dyn BindingIndex>;
}

/// The bindings of one exchange of a custom [`ExchangeType`], indexed for
/// routing.
pub trait BindingIndex: Send + Sync {
    /// A binding was added (arguments sorted by key).
    fn add(&mut self, id: BindingId, routing_key: &[u8], arguments: &FieldTable);
    /// A binding was removed.
    fn remove(&mut self, id: BindingId, routing_key: &[u8], arguments: &FieldTable);
    /// Pushes the bindings `message` matches onto `matched` (duplicates are
    /// harmless: each queue still gets one copy).
    fn route(&self, message: &Message<'_>, matched: &mut Vec<BindingId>);
}
