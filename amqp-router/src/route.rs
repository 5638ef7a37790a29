//! Routing: the walk over exchanges, bindings and alternate exchanges.

use crate::exchange_type::{BindingId, Message};
use crate::headers;
use crate::topic::TrieScratch;
use crate::{BindingInfo, Dest, Exchange, Index, Kind, Queue, Router, erl, m, refuse};
use amqp_types::{FieldTable, FieldValue, ProtocolError, ReplyCode};

/// Reusable buffers for [`Router::route`]: one per thread (or per
/// publisher), kept between calls so that routing allocates nothing once
/// the buffers have grown to the topology's size.
#[derive(Debug, Default, Clone)]
pub struct RouteScratch {
    stamp: u32,
    queue_mark: Vec<u32>,
    exchange_mark: Vec<u32>,
    queues: Vec<u32>,
    work: Vec<u32>,
    matched: Vec<BindingId>,
    sorted_headers: Vec<u32>,
    headers_sorted: bool,
    trie: TrieScratch,
}

impl RouteScratch {
    /// Empty buffers.
    pub fn new() -> Self {
        Self::default()
    }

    fn begin(&mut self, queue_slots: usize, exchange_slots: usize) {
        if self.queue_mark.len() < queue_slots {
            self.queue_mark.resize(queue_slots, 0);
        }
        if self.exchange_mark.len() < exchange_slots {
            self.exchange_mark.resize(exchange_slots, 0);
        }
        self.stamp = self.stamp.wrapping_add(1);
        if self.stamp == 0 {
            self.queue_mark.iter_mut().for_each(|m| *m = 0);
            self.exchange_mark.iter_mut().for_each(|m| *m = 0);
            self.stamp = 1;
        }
        self.queues.clear();
        self.work.clear();
        self.headers_sorted = false;
    }

    #[inline]
    fn add_queue(&mut self, q: u32) -> bool {
        let m = &mut self.queue_mark[q as usize];
        if *m == self.stamp {
            return false;
        }
        *m = self.stamp;
        self.queues.push(q);
        true
    }

    #[inline]
    fn visit_exchange(&mut self, x: u32) -> bool {
        let m = &mut self.exchange_mark[x as usize];
        if *m == self.stamp {
            return false;
        }
        *m = self.stamp;
        self.work.push(x);
        true
    }
}

/// What happened when an exchange whose bindings matched nothing consulted
/// its alternate exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlternateOutcome {
    /// The alternate exchange was visited next.
    Followed,
    /// It was already visited during this walk (a cycle): nothing more.
    AlreadyVisited,
    /// No exchange of that name exists: nothing more.
    Missing,
}

/// Watches a routing walk, for explaining it ([`Router::route_observed`]).
/// Every method has an empty default.
pub trait RouteObserver {
    /// An exchange's bindings are about to be matched.
    fn exchange(&mut self, exchange: &Exchange) {
        let _ = exchange;
    }
    /// A binding of the exchange being visited matched.
    fn binding(&mut self, id: BindingId, binding: &BindingInfo) {
        let _ = (id, binding);
    }
    /// The visited exchange's bindings matched nothing and it has an
    /// alternate exchange named `alternate`.
    fn alternate(&mut self, from: &Exchange, alternate: &[u8], outcome: AlternateOutcome) {
        let _ = (from, alternate, outcome);
    }
    /// The visited exchange's bindings matched nothing and it has no
    /// (usable) alternate exchange.
    fn dead_end(&mut self, exchange: &Exchange) {
        let _ = exchange;
    }
    /// The default exchange looked up queue `name` for one routing key.
    fn default_exchange(&mut self, name: &[u8], found: bool) {
        let _ = (name, found);
    }
    /// Whether the router should build [`BindingInfo`]s for
    /// [`binding`](Self::binding) (they cost allocations).
    fn wants_bindings(&self) -> bool {
        true
    }
}

/// The observer that observes nothing (what [`Router::route`] uses).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoObserver;

impl RouteObserver for NoObserver {
    #[inline]
    fn wants_bindings(&self) -> bool {
        false
    }
}

/// `basic.publish`'s routing-relevant fields.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// Exchange name (`""` for the default exchange; not stripped).
    pub exchange: &'a [u8],
    /// Routing key.
    pub routing_key: &'a [u8],
    /// The message's `headers` property.
    pub headers: Option<&'a FieldTable>,
    /// Return the message if it reaches no queue.
    pub mandatory: bool,
    /// Refused by RabbitMQ (540, connection).
    pub immediate: bool,
}

/// Where a message goes: the queues (each at most once) it reached.
pub struct Routed<'a, Q> {
    router: &'a Router<Q>,
    queues: &'a [u32],
    mandatory: bool,
}

impl<Q> std::fmt::Debug for Routed<'_, Q> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.names()).finish()
    }
}

impl<'a, Q> Routed<'a, Q> {
    /// How many queues.
    pub fn len(&self) -> usize {
        self.queues.len()
    }
    /// Whether the message reached no queue (unroutable).
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }
    /// Whether a `mandatory` publish is returned (312 NO_ROUTE): it was
    /// mandatory and reached no queue.
    pub fn returned(&self) -> bool {
        self.mandatory && self.queues.is_empty()
    }
    /// The queues reached, in no particular order.
    pub fn queues(&self) -> impl Iterator<Item = &'a Queue<Q>> + 'a {
        let r = self.router;
        self.queues.iter().filter_map(move |&q| r.queues.get(q))
    }
    /// The embedder's handles of the queues reached.
    pub fn handles(&self) -> impl Iterator<Item = &'a Q> + 'a {
        self.queues().map(|q| &q.handle)
    }
    /// The names of the queues reached.
    pub fn names(&self) -> impl Iterator<Item = &'a amqp_types::ShortString> + 'a {
        self.queues().map(|q| &q.name)
    }
}

fn cc_header<'a>(
    headers: Option<&'a FieldTable>,
    key: &str,
) -> Result<Option<&'a amqp_types::FieldArray>, ProtocolError> {
    match headers.and_then(|h| h.get(key)) {
        None => Ok(None),
        Some(FieldValue::Array(a)) => Ok(Some(a)),
        Some(other) => Err(refuse(
            ReplyCode::PRECONDITION_FAILED,
            format!(
                "invalid message: {{unacceptable_type_in_header,\"{key}\",{}}}",
                erl::type_name(other)
            ),
            m::BASIC_PUBLISH,
        )),
    }
}

impl<Q> Router<Q> {
    /// `basic.publish`: refuses `immediate` (540, connection), then routes
    /// as [`route`](Self::route); [`Routed::returned`] tells whether a
    /// mandatory message comes back.
    pub fn publish<'a>(
        &'a self,
        p: &Publish<'_>,
        scratch: &'a mut RouteScratch,
    ) -> Result<Routed<'a, Q>, ProtocolError> {
        if p.immediate {
            return Err(refuse(
                ReplyCode::NOT_IMPLEMENTED,
                "immediate=true".into(),
                m::BASIC_PUBLISH,
            ));
        }
        let mut r = self.route_observed(
            p.exchange,
            p.routing_key,
            p.headers,
            scratch,
            &mut NoObserver,
        )?;
        r.mandatory = p.mandatory;
        Ok(r)
    }

    /// Where a message published to `exchange` with `routing_key` and
    /// `headers` goes. Refuses a missing exchange (404) and an internal
    /// one (403), and a `CC`/`BCC` header that is not an array (406).
    /// Follows exchange-to-exchange bindings and alternate exchanges
    /// (iteratively, each exchange once); each queue appears once.
    pub fn route<'a>(
        &'a self,
        exchange: &[u8],
        routing_key: &[u8],
        headers: Option<&FieldTable>,
        scratch: &'a mut RouteScratch,
    ) -> Result<Routed<'a, Q>, ProtocolError> {
        self.route_observed(exchange, routing_key, headers, scratch, &mut NoObserver)
    }

    /// [`route`](Self::route), reporting the walk to `observer`: the
    /// same code path, so the explanation is the routing.
    pub fn route_observed<'a, O: RouteObserver + ?Sized>(
        &'a self,
        exchange: &[u8],
        routing_key: &[u8],
        headers: Option<&FieldTable>,
        scratch: &'a mut RouteScratch,
        observer: &mut O,
    ) -> Result<Routed<'a, Q>, ProtocolError> {
        scratch.begin(self.queues.slots(), self.exchanges.slots());
        let start = if exchange.is_empty() {
            None
        } else {
            let Some(&x) = self.exchange_names.get(exchange) else {
                return Err(self.not_found("exchange", exchange, m::BASIC_PUBLISH));
            };
            let ex = self
                .exchanges
                .get(x)
                .ok_or_else(|| self.not_found("exchange", exchange, m::BASIC_PUBLISH))?;
            if ex.internal {
                return Err(refuse(
                    ReplyCode::ACCESS_REFUSED,
                    format!(
                        "cannot publish to internal {}",
                        self.rs("exchange", exchange)
                    ),
                    m::BASIC_PUBLISH,
                ));
            }
            Some(x)
        };
        let msg = Message {
            routing_key,
            cc: cc_header(headers, "CC")?,
            bcc: cc_header(headers, "BCC")?,
            headers,
        };
        match start {
            None => {
                for key in msg.routing_keys() {
                    let q = self.queue_names.get(key).copied();
                    observer.default_exchange(key, q.is_some());
                    if let Some(q) = q {
                        scratch.add_queue(q);
                    }
                }
            }
            Some(x) => {
                scratch.visit_exchange(x);
                self.walk(&msg, scratch, observer);
            }
        }
        let s: &'a RouteScratch = scratch;
        Ok(Routed {
            router: self,
            queues: &s.queues,
            mandatory: false,
        })
    }

    fn walk<O: RouteObserver + ?Sized>(
        &self,
        msg: &Message<'_>,
        s: &mut RouteScratch,
        observer: &mut O,
    ) {
        while let Some(xid) = s.work.pop() {
            let Some(x) = self.exchanges.get(xid) else {
                continue;
            };
            observer.exchange(x);
            s.matched.clear();
            self.match_exchange(x, msg, s);
            if s.matched.is_empty() {
                match x.alternate_exchange() {
                    Some(Ok(ae)) => {
                        let outcome = match (!ae.is_empty())
                            .then(|| self.exchange_names.get(ae))
                            .flatten()
                        {
                            None => AlternateOutcome::Missing,
                            Some(&a) => {
                                if s.visit_exchange(a) {
                                    AlternateOutcome::Followed
                                } else {
                                    AlternateOutcome::AlreadyVisited
                                }
                            }
                        };
                        observer.alternate(x, ae, outcome);
                    }
                    _ => observer.dead_end(x),
                }
                continue;
            }
            let wants = observer.wants_bindings();
            for i in 0..s.matched.len() {
                let id = s.matched[i];
                let Some(b) = self.bindings.get(id.0) else {
                    continue;
                };
                if wants {
                    observer.binding(id, &self.binding_info(b));
                }
                match b.dest {
                    Dest::Queue(q) => {
                        s.add_queue(q);
                    }
                    Dest::Exchange(e) => {
                        s.visit_exchange(e);
                    }
                }
            }
        }
    }

    fn match_exchange(&self, x: &Exchange, msg: &Message<'_>, s: &mut RouteScratch) {
        match (&x.kind, &x.index) {
            (_, Index::Direct(map)) => {
                for key in msg.routing_keys() {
                    if let Some(v) = map.get(key) {
                        s.matched.extend(v.iter().map(|&b| BindingId(b)));
                    }
                }
            }
            (_, Index::Topic(trie)) => {
                for key in msg.routing_keys() {
                    let matched = &mut s.matched;
                    trie.matches(key, &mut s.trie, |b| matched.push(BindingId(b)));
                }
            }
            (Kind::Headers, Index::List) => {
                let data: &[(amqp_types::ShortString, FieldValue)] =
                    msg.headers.map(FieldTable::as_slice).unwrap_or(&[]);
                if !s.headers_sorted {
                    s.sorted_headers.clear();
                    s.sorted_headers.extend(0..data.len() as u32);
                    s.sorted_headers.sort_by(|&a, &b| {
                        data[a as usize]
                            .0
                            .as_bytes()
                            .cmp(data[b as usize].0.as_bytes())
                    });
                    s.headers_sorted = true;
                }
                for &b in &x.out {
                    if let Some(rec) = self.bindings.get(b) {
                        let sorted = s.sorted_headers.iter().map(|&i| &data[i as usize]);
                        if headers::matches(rec.args().as_slice(), rec.xmatch, sorted) {
                            s.matched.push(BindingId(b));
                        }
                    }
                }
            }
            (_, Index::List) => {
                s.matched.extend(x.out.iter().map(|&b| BindingId(b)));
            }
            (_, Index::Custom(c)) => c.route(msg, &mut s.matched),
        }
    }
}
