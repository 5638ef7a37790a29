//! What the management API and the Prometheus exporter read from the
//! core ([`Core::snapshot`]), the message counters they compute rates
//! from ([`MessageStats`]), and the few operations the management API
//! performs without a connection (`Core::admin_*`).
//!
//! A child module of [`core`](super) so that it can read the core's
//! private state; the core itself only carries a few counter increments
//! (marked `// management`).

use super::{Conn, ConnId, Core, QState, QueueId, TxAck, Unacked, check_queue_args};
use crate::auth::Auth;
use crate::queue::Msg;
use amqp_codec::Capabilities;
use amqp_codec::types::{BasicProperties, FieldTable, ProtocolError, ReplyCode, ShortString};
use amqp_router as r;
use amqp_router::{DestinationKind, OwnerId, QueueUsage};
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Instant;

/// Cumulative message counters, globally and per queue, named as in
/// RabbitMQ's `message_stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageStats {
    /// Messages published (globally: by clients; per queue: enqueued).
    pub publish: u64,
    /// Publisher confirms sent (acks).
    pub confirm: u64,
    /// Messages routed to at least one queue (global only).
    pub routed: u64,
    /// Unroutable mandatory messages returned (global only).
    pub return_unroutable: u64,
    /// Unroutable messages dropped (global only).
    pub drop_unroutable: u64,
    /// Deliveries to consumers in manual-ack mode.
    pub deliver: u64,
    /// Deliveries to consumers in auto-ack mode.
    pub deliver_no_ack: u64,
    /// `basic.get` in manual-ack mode.
    pub get: u64,
    /// `basic.get` in auto-ack mode.
    pub get_no_ack: u64,
    /// `basic.get` on an empty queue.
    pub get_empty: u64,
    /// Deliveries (and gets) of redelivered messages.
    pub redeliver: u64,
    /// Acknowledgements.
    pub ack: u64,
}

impl MessageStats {
    /// `deliver + deliver_no_ack + get + get_no_ack`, RabbitMQ's
    /// `deliver_get`.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// A client published a message that reached no queue (`unroutable`)
    /// and was returned (`returned`), or reached some.
    pub(super) fn count_publish(&mut self, unroutable: bool, returned: bool) {
        self.publish += 1;
        if !unroutable {
            self.routed += 1;
        } else if returned {
            self.return_unroutable += 1;
        } else {
            self.drop_unroutable += 1;
        }
    }

    /// A `basic.get` handed a message out.
    pub(super) fn count_get(&mut self, no_ack: bool, redelivered: bool) {
        if no_ack {
            self.get_no_ack += 1;
        } else {
            self.get += 1;
        }
        self.redeliver += u64::from(redelivered);
    }

    fn count_deliver(&mut self, no_ack: bool, redelivered: bool) {
        if no_ack {
            self.deliver_no_ack += 1;
        } else {
            self.deliver += 1;
        }
        self.redeliver += u64::from(redelivered);
    }

    /// The counters as (name, value) pairs, in RabbitMQ's key order.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("ack", self.ack),
            ("confirm", self.confirm),
            ("deliver", self.deliver),
            ("deliver_get", self.deliver_get()),
            ("deliver_no_ack", self.deliver_no_ack),
            ("drop_unroutable", self.drop_unroutable),
            ("get", self.get),
            ("get_empty", self.get_empty),
            ("get_no_ack", self.get_no_ack),
            ("publish", self.publish),
            ("redeliver", self.redeliver),
            ("return_unroutable", self.return_unroutable),
        ]
    }
}

/// Messages published into each exchange of a vhost (`publish_in`) and
/// routed on from it to at least one queue (`publish_out`).
#[derive(Debug, Clone, Default)]
pub struct ExchangeStats(std::collections::HashMap<ShortString, [u64; 2], super::CoreHasher>);

/// What the management API shows of a connection besides the core's own
/// state: addresses, the client's properties, tuning, connect time.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The peer's and the broker's address.
    pub addrs: Option<(SocketAddr, SocketAddr)>,
    /// When it connected, ms since the Unix epoch.
    pub connected_at: u64,
    /// The client's properties (`connection.start-ok`), encoded as on the
    /// wire (a few hundred bytes, where the decoded table takes a few KB
    /// for each connection): [`ConnInfo::client_properties`] decodes them.
    pub client_properties_wire: bytes::Bytes,
    /// Negotiated channel-max, frame-max, heartbeat.
    pub tuning: Option<amqp_codec::Tuning>,
}

impl ConnInfo {
    /// The handshake finished.
    pub(super) fn connected(&mut self, tuning: amqp_codec::Tuning, properties: FieldTable) {
        self.tuning = Some(tuning);
        let mut wire = bytes::BytesMut::new();
        // (A table the codec decoded encodes again.)
        let _ = amqp_wire::encode_field_table(&properties, &mut wire);
        self.client_properties_wire = wire.freeze();
    }

    /// The client's properties (empty before the handshake ends).
    pub fn client_properties(&self) -> FieldTable {
        amqp_wire::decode_field_table(&self.client_properties_wire).unwrap_or_default()
    }
}

/// A virtual host.
#[derive(Debug, Clone)]
pub struct VhostSnap {
    /// Its name.
    pub name: String,
}

/// An exchange.
#[derive(Debug, Clone)]
pub struct ExchangeSnap {
    /// Its virtual host.
    pub vhost: String,
    /// Its name (`""` is the default exchange).
    pub name: String,
    /// Type name.
    pub kind: String,
    /// Durable flag.
    pub durable: bool,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// Messages published into it (`None`: none yet).
    pub publish_in: Option<u64>,
    /// Messages it routed to at least one queue.
    pub publish_out: u64,
}

/// A queue.
#[derive(Debug, Clone)]
pub struct QueueSnap {
    /// Its virtual host.
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Durable flag.
    pub durable: bool,
    /// Exclusive to a connection (its id).
    pub exclusive_owner: Option<ConnId>,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    /// Messages ready for delivery.
    pub messages_ready: u64,
    /// Messages delivered and not yet acknowledged.
    pub messages_unacknowledged: u64,
    /// Body bytes of the ready messages.
    pub message_bytes_ready: u64,
    /// Body bytes of the unacknowledged messages.
    pub message_bytes_unacknowledged: u64,
    /// Ready messages paged out to disk.
    pub messages_paged_out: u64,
    /// Their body bytes.
    pub message_bytes_paged_out: u64,
    /// Consumers attached.
    pub consumers: u64,
    /// Memory estimate: the body bytes this queue holds (ready and
    /// unacknowledged) plus a fixed overhead per message.
    pub memory: u64,
    /// The tag of an exclusive consumer, if any.
    pub exclusive_consumer_tag: Option<String>,
    /// The tag of the active consumer (single active consumer queues).
    pub single_active_consumer_tag: Option<String>,
    /// `classic`, `quorum` or `stream`.
    pub kind: &'static str,
    /// The policy in force, and its definition.
    pub policy: Option<(String, serde_json::Map<String, serde_json::Value>)>,
    /// Cumulative counters.
    pub stats: MessageStats,
}

impl QueueSnap {
    /// Ready plus unacknowledged.
    pub fn messages(&self) -> u64 {
        self.messages_ready + self.messages_unacknowledged
    }
}

/// A binding (the default exchange's implicit bindings included).
#[derive(Debug, Clone)]
pub struct BindingSnap {
    /// Its virtual host.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Destination queue or exchange.
    pub destination: String,
    /// `"queue"` or `"exchange"`.
    pub destination_type: &'static str,
    /// Binding key.
    pub routing_key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// A connection.
#[derive(Debug, Clone)]
pub struct ConnSnap {
    /// The core's id for it.
    pub id: ConnId,
    /// The authenticated user (`None` during the handshake).
    pub user: Option<String>,
    /// The open virtual host.
    pub vhost: Option<String>,
    /// Open channels.
    pub channels: u64,
    /// The client's capabilities.
    pub capabilities: Capabilities,
    /// Addresses, client properties, tuning.
    pub info: ConnInfo,
    /// RabbitMQ's connection state: `starting` (handshake), `blocked` (a
    /// resource alarm stopped it publishing), `flow` (consumer bias held
    /// it within the last second, [`FLOW_HOLD`](crate::core::FLOW_HOLD))
    /// or `running`.
    pub state: &'static str,
    /// Over TLS: the session.
    pub tls: Option<crate::tls::Session>,
}

/// A channel.
#[derive(Debug, Clone)]
pub struct ChanSnap {
    /// Its connection.
    pub conn: ConnId,
    /// Its number.
    pub number: u16,
    /// Consumers on it.
    pub consumers: u64,
    /// Deliveries not yet acknowledged.
    pub unacked: u64,
    /// Per-consumer prefetch (`basic.qos`, global=false).
    pub prefetch: u16,
    /// Channel-wide prefetch (global=true).
    pub global_prefetch: u16,
    /// Publisher confirms on.
    pub confirm: bool,
    /// In a transaction.
    pub transactional: bool,
}

/// A consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSnap {
    /// Its connection.
    pub conn: ConnId,
    /// Its channel.
    pub channel: u16,
    /// The queue's virtual host.
    pub vhost: String,
    /// The queue.
    pub queue: String,
    /// Its tag.
    pub tag: String,
    /// Manual acknowledgements.
    pub ack_required: bool,
    /// Its prefetch limit.
    pub prefetch: u16,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// Receiving (false while waiting behind a single active consumer).
    pub active: bool,
    /// Unacknowledged deliveries to it.
    pub unacked: u64,
}

/// Plain data copied out of the core: every object the management API
/// lists, and the counters.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Virtual hosts, by name.
    pub vhosts: Vec<VhostSnap>,
    /// Exchanges, by vhost and name.
    pub exchanges: Vec<ExchangeSnap>,
    /// Queues, by vhost and name.
    pub queues: Vec<QueueSnap>,
    /// Bindings, by vhost, source, destination, key.
    pub bindings: Vec<BindingSnap>,
    /// Connections, by id.
    pub connections: Vec<ConnSnap>,
    /// Channels, by connection and number.
    pub channels: Vec<ChanSnap>,
    /// Consumers, by connection, channel, tag.
    pub consumers: Vec<ConsumerSnap>,
    /// Global counters.
    pub totals: MessageStats,
    /// Users, permissions.
    pub auth: Auth,
    /// Resource alarms in force.
    pub alarms: Vec<super::Alarm>,
}

/// Per-message overhead added to the body bytes in a queue's memory
/// estimate (the entry, its `Arc`, properties).
const MSG_OVERHEAD: u64 = 96;

/// Why an admin operation failed, as the management API reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// 404: no such vhost, queue or exchange.
    NotFound(String),
    /// 400: refused (precondition failed, in use, locked, bad argument).
    BadRequest(String),
}

impl From<ProtocolError> for AdminError {
    fn from(e: ProtocolError) -> Self {
        if e.code() == ReplyCode::NOT_FOUND {
            AdminError::NotFound(e.to_string())
        } else {
            AdminError::BadRequest(e.to_string())
        }
    }
}

/// One message taken by [`Core::admin_get`].
#[derive(Debug, Clone)]
pub struct GotMessage {
    /// The message.
    pub msg: Msg,
    /// Delivered before.
    pub redelivered: bool,
    /// Messages left in the queue after this one was taken.
    pub message_count: u64,
}

fn lossy(s: &ShortString) -> String {
    s.to_string_lossy().into_owned()
}

fn short(s: &str) -> Result<ShortString, AdminError> {
    ShortString::try_from(s).map_err(|_| AdminError::BadRequest(format!("name too long: {s}")))
}

impl Core {
    /// Copies out everything the management API lists.
    pub fn snapshot(&self) -> Snapshot {
        let mut unacked: HashMap<QueueId, (u64, u64)> = HashMap::new();
        for c in self.conns.values() {
            for ch in c.channels.values() {
                for u in ch.unacked.values() {
                    let e = unacked.entry(u.queue).or_default();
                    e.0 += 1;
                    e.1 += u.entry.msg.size() as u64;
                }
                if let Some(tx) = &ch.tx {
                    for (_, u, _) in &tx.acks {
                        let e = unacked.entry(u.queue).or_default();
                        e.0 += 1;
                        e.1 += u.entry.msg.size() as u64;
                    }
                }
            }
        }
        let mut vhosts: Vec<VhostSnap> = self
            .vhosts
            .keys()
            .map(|n| VhostSnap { name: n.clone() })
            .collect();
        vhosts.sort_by(|a, b| a.name.cmp(&b.name));
        let mut exchanges = Vec::new();
        let mut queues = Vec::new();
        let mut bindings = Vec::new();
        for (vname, v) in &self.vhosts {
            if v.router.exchange(b"").is_none() {
                // The default exchange (built into the router's routing).
                let st = v.xstats.0.get(&b""[..]);
                exchanges.push(ExchangeSnap {
                    vhost: vname.clone(),
                    name: String::new(),
                    kind: "direct".into(),
                    durable: true,
                    auto_delete: false,
                    internal: false,
                    arguments: FieldTable::new(),
                    publish_in: st.map(|s| s[0]),
                    publish_out: st.map_or(0, |s| s[1]),
                });
            }
            for x in v.router.exchanges() {
                let st = v.xstats.0.get(x.name().as_bytes());
                exchanges.push(ExchangeSnap {
                    publish_in: st.map(|s| s[0]),
                    publish_out: st.map_or(0, |s| s[1]),
                    vhost: vname.clone(),
                    name: lossy(x.name()),
                    kind: x.type_name().to_owned(),
                    durable: x.durable(),
                    auto_delete: x.auto_delete(),
                    internal: x.internal(),
                    arguments: x.arguments().clone(),
                });
            }
            for q in v.router.queues() {
                let Some(qs) = self.queues.get(q.handle()) else {
                    continue;
                };
                let (un, un_bytes) = unacked.get(q.handle()).copied().unwrap_or_default();
                // A stream's messages all count as ready (they stay).
                let (ready, ready_bytes) = match &qs.stream {
                    Some(log) => (log.len() as u64, log.body_bytes() as u64),
                    None => (qs.ready.len() as u64, qs.ready.bytes() as u64),
                };
                let (paged, paged_bytes) =
                    (qs.ready.paged_len() as u64, qs.ready.paged_bytes() as u64);
                let exclusive_consumer_tag = qs
                    .exclusive_consumer
                    .then(|| qs.consumers.first().map(|k| lossy(&k.tag)))
                    .flatten();
                let single_active_consumer_tag = qs
                    .args
                    .single_active
                    .then(|| {
                        qs.consumers
                            .iter()
                            .min_by_key(|k| k.since)
                            .map(|k| lossy(&k.tag))
                    })
                    .flatten();
                queues.push(QueueSnap {
                    vhost: vname.clone(),
                    name: lossy(q.name()),
                    durable: q.durable(),
                    exclusive_owner: q.exclusive_owner().map(|o| o.0),
                    auto_delete: q.auto_delete(),
                    arguments: q.arguments().clone(),
                    messages_ready: ready,
                    messages_unacknowledged: un,
                    message_bytes_ready: ready_bytes,
                    message_bytes_unacknowledged: un_bytes,
                    messages_paged_out: paged,
                    message_bytes_paged_out: paged_bytes,
                    consumers: qs.consumers.len() as u64,
                    memory: ready_bytes - paged_bytes
                        + un_bytes
                        + (ready - paged + un) * MSG_OVERHEAD,
                    exclusive_consumer_tag,
                    single_active_consumer_tag,
                    kind: match qs.args.kind {
                        crate::lifecycle::QueueKind::Classic => "classic",
                        crate::lifecycle::QueueKind::Quorum => "quorum",
                        crate::lifecycle::QueueKind::Stream => "stream",
                    },
                    policy: qs.policy.as_ref().and_then(|p| {
                        let def = self.vhosts.get(qs.vhost())?.policies.get(p)?;
                        Some((p.clone(), def.definition.clone()))
                    }),
                    stats: qs.stats,
                });
                // The default exchange's implicit binding.
                bindings.push(BindingSnap {
                    vhost: vname.clone(),
                    source: String::new(),
                    destination: lossy(q.name()),
                    destination_type: "queue",
                    routing_key: lossy(q.name()),
                    arguments: FieldTable::new(),
                });
            }
            for b in v.router.bindings() {
                bindings.push(BindingSnap {
                    vhost: vname.clone(),
                    source: lossy(&b.source),
                    destination: lossy(&b.destination),
                    destination_type: match b.destination_kind {
                        DestinationKind::Queue => "queue",
                        DestinationKind::Exchange => "exchange",
                    },
                    routing_key: lossy(&b.routing_key),
                    arguments: b.arguments.clone(),
                });
            }
        }
        exchanges.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        queues.sort_by(|a, b| (&a.vhost, &a.name).cmp(&(&b.vhost, &b.name)));
        bindings.sort_by(|a, b| {
            (&a.vhost, &a.source, &a.destination, &a.routing_key).cmp(&(
                &b.vhost,
                &b.source,
                &b.destination,
                &b.routing_key,
            ))
        });
        let mut connections = Vec::new();
        let mut channels = Vec::new();
        let mut consumers = Vec::new();
        for (&id, c) in &self.conns {
            connections.push(self.conn_snap(id, c));
            for (&n, ch) in &c.channels {
                channels.push(ChanSnap {
                    conn: id,
                    number: n,
                    consumers: ch.consumers.len() as u64,
                    unacked: ch.unacked.len() as u64,
                    prefetch: ch.prefetch,
                    global_prefetch: ch.global_prefetch,
                    confirm: ch.confirm,
                    transactional: ch.tx.is_some(),
                });
                for (_, tag, k) in ch.consumers.iter() {
                    let Some(qs) = self.queues.get(&k.queue) else {
                        continue;
                    };
                    let active = !qs.args.single_active
                        || qs
                            .consumers
                            .iter()
                            .min_by_key(|k| k.since)
                            .is_some_and(|a| a.conn == id && a.ch == n && a.tag == *tag);
                    consumers.push(ConsumerSnap {
                        conn: id,
                        channel: n,
                        vhost: qs.vhost().clone(),
                        queue: lossy(qs.name()),
                        tag: lossy(tag),
                        ack_required: !k.no_ack,
                        prefetch: k.prefetch,
                        exclusive: qs.exclusive_consumer,
                        active,
                        unacked: u64::from(k.unacked),
                    });
                }
            }
        }
        connections.sort_by_key(|c| c.id);
        channels.sort_by_key(|c| (c.conn, c.number));
        consumers.sort_by(|a, b| (a.conn, a.channel, &a.tag).cmp(&(b.conn, b.channel, &b.tag)));
        Snapshot {
            vhosts,
            exchanges,
            queues,
            bindings,
            connections,
            channels,
            consumers,
            totals: self.counters,
            auth: self.auth.clone(),
            alarms: self.alarms(),
        }
    }

    fn conn_snap(&self, id: ConnId, c: &Conn) -> ConnSnap {
        ConnSnap {
            id,
            user: c.user.clone(),
            vhost: c.vhost.as_deref().map(str::to_owned),
            channels: c.channels.len() as u64,
            capabilities: c.caps,
            info: c.mgmt.clone(),
            state: if c.user.is_none() {
                "starting"
            } else if c.blocked {
                "blocked"
            } else if c.held.is_some()
                || c.held_at.zip(self.now).is_some_and(|(at, now)| {
                    now.saturating_duration_since(at) < std::time::Duration::from_secs(1)
                })
            {
                "flow"
            } else {
                "running"
            },
            tls: c.peer.tls.clone(),
        }
    }

    /// Whether virtual host `name` exists.
    pub fn has_vhost(&self, name: &str) -> bool {
        self.vhosts.contains_key(name)
    }

    /// The users, virtual hosts and permissions.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// The users as RabbitMQ's `/api/users` and definitions exports show
    /// them, by name, each with its `limits` (`max-connections`,
    /// `max-channels`).
    pub fn users_json(&self) -> Vec<serde_json::Value> {
        let mut users = self.auth.users_json();
        for u in &mut users {
            let name = u["name"].as_str().unwrap_or_default().to_owned();
            if let Some(l) = self.limits.users.get(&name) {
                u["limits"] = user_limits_json(l);
            }
        }
        users
    }

    /// Sets `user`'s limits (a definitions import's `limits`); connections
    /// already open keep theirs until their next channel opens or closes.
    pub fn admin_set_user_limits(&mut self, user: &str, limits: crate::core::UserLimits) {
        if limits == crate::core::UserLimits::default() {
            self.limits.users.remove(user);
        } else {
            self.limits.users.insert(user.to_owned(), limits);
        }
        self.user_channel_caps(user);
    }

    /// The global message counters.
    pub fn message_stats(&self) -> MessageStats {
        self.counters
    }

    /// Records connection `id`'s addresses (peer, local) and when it
    /// connected (ms since the Unix epoch), for the management API.
    pub fn set_conn_info(&mut self, id: ConnId, peer: SocketAddr, local: SocketAddr, at_ms: u64) {
        if let Some(c) = self.conns.get_mut(&id) {
            c.mgmt.addrs = Some((peer, local));
            c.mgmt.connected_at = at_ms;
        }
    }

    /// Counts a delivery to a consumer of queue `q`.
    pub(super) fn count_deliver(&mut self, q: QueueId, no_ack: bool, redelivered: bool) {
        self.counters.count_deliver(no_ack, redelivered);
        if let Some(qs) = self.queues.get_mut(&q) {
            qs.stats.count_deliver(no_ack, redelivered);
        }
    }

    /// Counts a client's publish into `exchange` of `vhost`.
    pub(super) fn count_exchange(&mut self, vhost: &str, exchange: &ShortString, routed: bool) {
        let Some(v) = self.vhosts.get_mut(vhost) else {
            return;
        };
        let st = match v.xstats.0.get_mut(exchange.as_bytes()) {
            Some(st) => st,
            None => v.xstats.0.entry(exchange.clone()).or_default(),
        };
        st[0] += 1;
        st[1] += u64::from(routed);
    }

    /// Counts a `basic.get` that took a message from queue `q`.
    pub(super) fn count_get(&mut self, q: QueueId, no_ack: bool, redelivered: bool) {
        self.counters.count_get(no_ack, redelivered);
        if let Some(qs) = self.queues.get_mut(&q) {
            qs.stats.count_get(no_ack, redelivered);
        }
    }

    /// Counts an acknowledgement of a message of queue `q`.
    pub(super) fn count_ack(&mut self, q: QueueId) {
        self.counters.ack += 1;
        if let Some(qs) = self.queues.get_mut(&q) {
            qs.stats.ack += 1;
        }
    }

    fn admin_begin(&mut self, now: Instant) {
        self.now = Some(now);
        // No connection is being handled: every output wakes its
        // connection.
        self.current = 0;
    }

    fn router_mut(&mut self, vhost: &str) -> Result<&mut r::Router<QueueId>, AdminError> {
        self.vhosts
            .get_mut(vhost)
            .map(|v| &mut v.router)
            .ok_or_else(|| AdminError::NotFound(format!("no vhost '{vhost}'")))
    }

    /// Declares an exchange (`PUT /api/exchanges/vhost/name`); whether it
    /// was created.
    #[allow(clippy::too_many_arguments)]
    pub fn admin_declare_exchange(
        &mut self,
        vhost: &str,
        name: &str,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: &FieldTable,
    ) -> Result<bool, AdminError> {
        self.definitions_dirty = true;
        let router = self.router_mut(vhost)?;
        let d = r::ExchangeDeclare {
            name: name.as_bytes(),
            kind: kind.as_bytes(),
            passive: false,
            durable,
            auto_delete,
            internal,
            arguments,
        };
        let created = router.declare_exchange(&d)? == r::Declared::Created;
        self.apply_exchange_policy(vhost, name.as_bytes());
        Ok(created)
    }

    /// Deletes an exchange (`DELETE /api/exchanges/vhost/name`).
    pub fn admin_delete_exchange(
        &mut self,
        vhost: &str,
        name: &str,
        if_unused: bool,
        now: Instant,
    ) -> Result<(), AdminError> {
        self.admin_begin(now);
        let router = self.router_mut(vhost)?;
        let removed = router.delete_exchange(name.as_bytes(), if_unused)?;
        self.removed(removed);
        Ok(())
    }

    /// Declares a queue (`PUT /api/queues/vhost/name`); whether it was
    /// created.
    pub fn admin_declare_queue(
        &mut self,
        vhost: &str,
        name: &str,
        durable: bool,
        auto_delete: bool,
        arguments: &FieldTable,
        now: Instant,
    ) -> Result<bool, AdminError> {
        self.admin_begin(now);
        check_queue_args(arguments, name, vhost)
            .map_err(|e| AdminError::BadRequest(format!("PRECONDITION_FAILED - {e}")))?;
        if name.is_empty() {
            return Err(AdminError::BadRequest("queue name is empty".into()));
        }
        let next = self.next_queue;
        let router = self.router_mut(vhost)?;
        let d = r::QueueDeclare {
            name: name.as_bytes(),
            passive: false,
            durable,
            exclusive: false,
            auto_delete,
            arguments,
            owner: OwnerId(0),
        };
        let declared = router.declare_queue(&d, |_| next)?;
        let created = declared.declared == r::Declared::Created;
        if created {
            self.next_queue += 1;
            self.queues.insert(
                next,
                QState::new(
                    vhost,
                    declared.name,
                    durable,
                    auto_delete,
                    arguments,
                    self.pager.as_ref(),
                ),
            );
            self.apply_policy(next);
            self.definitions_dirty = true;
            self.used(next);
        }
        Ok(created)
    }

    fn admin_queue(&self, vhost: &str, name: &str) -> Result<(QueueId, OwnerId), AdminError> {
        let v = self
            .vhosts
            .get(vhost)
            .ok_or_else(|| AdminError::NotFound(format!("no vhost '{vhost}'")))?;
        let q = v
            .router
            .queue(name.as_bytes())
            .ok_or_else(|| AdminError::NotFound(format!("no queue '{name}' in vhost '{vhost}'")))?;
        Ok((*q.handle(), q.exclusive_owner().unwrap_or(OwnerId(0))))
    }

    /// Deletes a queue (`DELETE /api/queues/vhost/name`); its consumers
    /// are cancelled.
    pub fn admin_delete_queue(
        &mut self,
        vhost: &str,
        name: &str,
        if_unused: bool,
        if_empty: bool,
        now: Instant,
    ) -> Result<(), AdminError> {
        self.admin_begin(now);
        let (_, owner) = self.admin_queue(vhost, name)?;
        let queues = &self.queues;
        let v = self
            .vhosts
            .get_mut(vhost)
            .ok_or_else(|| AdminError::NotFound(format!("no vhost '{vhost}'")))?;
        let d = r::QueueDelete {
            name: name.as_bytes(),
            if_unused,
            if_empty,
            owner,
        };
        let removed = v.router.delete_queue(&d, |q| {
            queues.get(q).map_or(QueueUsage::default(), |q| QueueUsage {
                consumers: super::count(q.consumers.len()),
                messages: super::count(q.ready.len()),
            })
        })?;
        self.removed(removed);
        Ok(())
    }

    /// Purges a queue's ready messages (`DELETE
    /// /api/queues/vhost/name/contents`); how many went.
    pub fn admin_purge(&mut self, vhost: &str, name: &str) -> Result<usize, AdminError> {
        let (q, _) = self.admin_queue(vhost, name)?;
        Ok(self.drain_ready(q))
    }

    /// Binds `destination` (a queue, or an exchange) to exchange `source`
    /// (`POST /api/bindings/vhost/e/source/q|e/destination`).
    pub fn admin_bind(
        &mut self,
        vhost: &str,
        source: &str,
        destination: &str,
        to_queue: bool,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), AdminError> {
        let owner = if to_queue {
            self.admin_queue(vhost, destination)?.1
        } else {
            OwnerId(0)
        };
        self.definitions_dirty = true;
        let router = self.router_mut(vhost)?;
        let b = r::Bind::new(
            source.as_bytes(),
            destination.as_bytes(),
            routing_key.as_bytes(),
            arguments,
            owner,
        );
        if to_queue {
            router.bind_queue(&b)?;
        } else {
            router.bind_exchange(&b)?;
        }
        Ok(())
    }

    /// Removes a binding (`DELETE /api/bindings/vhost/e/source/q|e/destination/props`).
    #[allow(clippy::too_many_arguments)]
    pub fn admin_unbind(
        &mut self,
        vhost: &str,
        source: &str,
        destination: &str,
        to_queue: bool,
        routing_key: &str,
        arguments: &FieldTable,
        now: Instant,
    ) -> Result<(), AdminError> {
        self.admin_begin(now);
        let owner = if to_queue {
            self.admin_queue(vhost, destination)?.1
        } else {
            OwnerId(0)
        };
        let router = self.router_mut(vhost)?;
        let b = r::Bind::new(
            source.as_bytes(),
            destination.as_bytes(),
            routing_key.as_bytes(),
            arguments,
            owner,
        );
        let removed = if to_queue {
            router.unbind_queue(&b)?
        } else {
            router.unbind_exchange(&b)?
        };
        self.removed(removed);
        Ok(())
    }

    /// Publishes a message through exchange `exchange` (`POST
    /// /api/exchanges/vhost/name/publish`); whether it reached a queue.
    pub fn admin_publish(
        &mut self,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        properties: BasicProperties,
        body: Bytes,
        now: Instant,
    ) -> Result<bool, AdminError> {
        self.admin_begin(now);
        let v = self
            .vhosts
            .get(vhost)
            .ok_or_else(|| AdminError::NotFound(format!("no vhost '{vhost}'")))?;
        let p = r::Publish {
            exchange: exchange.as_bytes(),
            routing_key: routing_key.as_bytes(),
            headers: properties.headers.as_ref(),
            mandatory: false,
            immediate: false,
        };
        let routed = v.router.publish(&p, &mut self.scratch)?;
        let queues: Vec<QueueId> = routed.handles().copied().collect();
        self.counters.count_publish(queues.is_empty(), false);
        self.count_exchange(vhost, &short(exchange)?, !queues.is_empty());
        short(routing_key)?;
        let msg = Msg::new(
            exchange.as_bytes(),
            routing_key.as_bytes(),
            &properties,
            body,
        );
        let msg = self.store_publish(&queues, msg);
        self.enqueue(&queues, &msg);
        Ok(!queues.is_empty())
    }

    /// Takes up to `count` messages from a queue's head (`POST
    /// /api/queues/vhost/name/get`); with `requeue` they go back (marked
    /// redelivered), as RabbitMQ's `ack_requeue_true`.
    pub fn admin_get(
        &mut self,
        vhost: &str,
        name: &str,
        count: usize,
        requeue: bool,
        now: Instant,
    ) -> Result<Vec<GotMessage>, AdminError> {
        self.admin_begin(now);
        let (q, _) = self.admin_queue(vhost, name)?;
        self.expire(q);
        let mut out = Vec::new();
        let mut taken = Vec::new();
        if let Some(qs) = self.queues.get_mut(&q) {
            for _ in 0..count {
                let Some(e) = qs.ready.pop() else {
                    break;
                };
                qs.stats.count_get(false, e.redelivered);
                self.counters.count_get(false, e.redelivered);
                out.push(GotMessage {
                    msg: e.msg.clone(),
                    redelivered: e.redelivered,
                    message_count: qs.ready.len() as u64,
                });
                taken.push(e);
            }
        }
        let how = if requeue { TxAck::Requeue } else { TxAck::Ack };
        let mut touched = Vec::new();
        let settled = taken.into_iter().map(|entry| {
            (
                Unacked {
                    queue: q,
                    entry,
                    consumer: None,
                    at: None,
                },
                how,
            )
        });
        self.settle_now(settled, &mut touched);
        self.dispatch(q);
        Ok(out)
    }
}

impl Core {
    /// The topology part of a definitions export, every virtual host
    /// (exclusive queues and their bindings left out, as RabbitMQ's export
    /// does).
    pub fn topology(&self) -> r::definitions::Topology {
        let mut t = r::definitions::Topology::default();
        let mut names: Vec<&String> = self.vhosts.keys().collect();
        names.sort();
        for n in names {
            let router = &self.vhosts[n].router;
            let mut part = r::definitions::Topology::from_router(router);
            let exclusive: std::collections::HashSet<String> = router
                .queues()
                .filter(|q| q.exclusive_owner().is_some())
                .map(|q| lossy(q.name()))
                .collect();
            part.queues.retain(|q| !exclusive.contains(&q.name));
            part.bindings
                .retain(|b| !(b.destination_type == "queue" && exclusive.contains(&b.destination)));
            t.exchanges.extend(part.exchanges);
            t.queues.extend(part.queues);
            t.bindings.extend(part.bindings);
            t.policies
                .extend(self.vhosts[n].policies.values().map(|p| p.to_def(n)));
        }
        t
    }
}

/// A connection closed by the management API (`DELETE
/// /api/connections/name` without `X-Reason`): RabbitMQ's text.
pub const CLOSED_VIA_MANAGEMENT: &str = "Closed via management plugin";

/// Users, virtual hosts and permissions changed at run time (the
/// management API, a definitions import): they take effect at once — new
/// logins and vhost opens see them, and open connections' permission
/// checks are redone on their next operation, as RabbitMQ's are.
impl Core {
    /// Every open connection's permission again from the current users and
    /// permissions (checks already cached are forgotten).
    fn refresh_permissions(&mut self) {
        let auth = &self.auth;
        for c in self.conns.values_mut() {
            if let (Some(u), Some(v)) = (&c.user, &c.vhost) {
                c.permission = auth.permissions.get(&(u.clone(), v.to_string())).cloned();
                c.topic = auth.topic_grants(u, v);
                c.allowed.clear();
                c.last_allowed = None;
            }
        }
    }

    /// Closes connection `id` with 320 CONNECTION_FORCED and `text`, as
    /// RabbitMQ does from its management plugin: its channels are released
    /// at once (consumers cancelled, unacknowledged messages requeued).
    fn force_close(&mut self, id: ConnId, text: &str) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
        let chans: Vec<u16> = c.channels.keys().copied().collect();
        for ch in chans {
            self.close_channel(id, ch);
        }
        self.push(
            id,
            super::Out::Refuse(ProtocolError::refused(
                0,
                ReplyCode::CONNECTION_FORCED,
                text.to_owned(),
            )),
        );
    }

    /// Whether queue (`queue`) or exchange `name` exists in `vhost`.
    pub fn admin_exists(&self, vhost: &str, name: &str, queue: bool) -> Result<bool, AdminError> {
        let v = self
            .vhosts
            .get(vhost)
            .ok_or_else(|| AdminError::NotFound(format!("no vhost '{vhost}'")))?;
        Ok(if queue {
            v.router.queue(name.as_bytes()).is_some()
        } else {
            name.is_empty() || v.router.exchange(name.as_bytes()).is_some()
        })
    }

    /// Closes connection `id` (`DELETE /api/connections/name`) with 320
    /// CONNECTION_FORCED and `reason`.
    pub fn admin_close_connection(
        &mut self,
        id: ConnId,
        reason: &str,
        now: Instant,
    ) -> Result<(), AdminError> {
        self.admin_begin(now);
        if !self.conns.contains_key(&id) {
            return Err(AdminError::NotFound(format!("no connection {id}")));
        }
        self.force_close(id, reason);
        Ok(())
    }

    /// Creates virtual host `name` (`PUT /api/vhosts/name`), or updates
    /// its metadata when given; whether it was created. A new vhost's
    /// `creator` gets every permission in it, as RabbitMQ's management API
    /// grants the user who creates one.
    pub fn admin_add_vhost(
        &mut self,
        name: &str,
        meta: Option<crate::auth::VhostMeta>,
        creator: Option<&str>,
    ) -> Result<bool, AdminError> {
        if name.is_empty() {
            return Err(AdminError::BadRequest("vhost name is empty".into()));
        }
        short(name)?;
        let created = !self.vhosts.contains_key(name);
        if created {
            self.vhosts.insert(
                name.to_owned(),
                super::Vhost {
                    router: r::Router::new(name.to_owned()),
                    policies: Default::default(),
                    xstats: ExchangeStats::default(),
                },
            );
            if let Some(u) = creator.filter(|u| self.auth.users.contains_key(*u)) {
                self.auth
                    .permissions
                    .entry((u.to_owned(), name.to_owned()))
                    .or_insert_with(crate::auth::Permission::all);
                self.refresh_permissions();
            }
        }
        if let Some(meta) = meta {
            self.auth.vhost_meta.insert(name.to_owned(), meta);
        }
        self.definitions_dirty = true;
        Ok(created)
    }

    /// Deletes virtual host `name` (`DELETE /api/vhosts/name`) with
    /// everything in it: its connections close with 320 CONNECTION_FORCED
    /// "vhost 'name' is deleted" (RabbitMQ's text), its queues and their
    /// messages go, and the permissions in it.
    pub fn admin_delete_vhost(&mut self, name: &str, now: Instant) -> Result<(), AdminError> {
        self.admin_begin(now);
        if !self.vhosts.contains_key(name) {
            return Err(AdminError::NotFound(format!("no vhost '{name}'")));
        }
        let text = format!("vhost '{name}' is deleted");
        let mut ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.vhost.as_deref() == Some(name))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.force_close(id, &text);
        }
        if let Some(v) = self.vhosts.remove(name) {
            let queues = v
                .router
                .queues()
                .map(|q| r::RemovedQueue {
                    name: q.name().clone(),
                    handle: *q.handle(),
                })
                .collect();
            self.removed(r::Removed {
                bindings: Vec::new(),
                exchanges: Vec::new(),
                queues,
            });
        }
        self.auth.permissions.retain(|(_, v), _| v != name);
        self.auth.topic_permissions.retain(|(_, v, _), _| v != name);
        self.auth.vhost_meta.remove(name);
        self.definitions_dirty = true;
        Ok(())
    }

    /// Adds or replaces a user (`PUT /api/users/name`); whether it is new.
    /// Its open connections keep their permissions (RabbitMQ does not
    /// re-authenticate them).
    pub fn admin_put_user(&mut self, user: crate::auth::User) -> bool {
        self.definitions_dirty = true;
        self.auth.users.insert(user.name.clone(), user).is_none()
    }

    /// Deletes a user (`DELETE /api/users/name`) and their permissions;
    /// their connections close with 320 CONNECTION_FORCED "user 'name' is
    /// deleted" (RabbitMQ's text).
    pub fn admin_delete_user(&mut self, name: &str, now: Instant) -> Result<(), AdminError> {
        self.admin_begin(now);
        if self.auth.users.remove(name).is_none() {
            return Err(AdminError::NotFound(format!("no user '{name}'")));
        }
        self.auth.permissions.retain(|(u, _), _| u != name);
        self.auth.topic_permissions.retain(|(u, _, _), _| u != name);
        self.limits.users.remove(name);
        let text = format!("user '{name}' is deleted");
        let mut ids: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.user.as_deref() == Some(name))
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        for id in ids {
            self.force_close(id, &text);
        }
        self.refresh_permissions();
        self.definitions_dirty = true;
        Ok(())
    }

    /// Sets `user`'s permission in `vhost` (`PUT
    /// /api/permissions/vhost/user`); whether it is new. Both must exist
    /// (else RabbitMQ's 400 `vhost_or_user_not_found`).
    pub fn admin_set_permission(
        &mut self,
        user: &str,
        vhost: &str,
        permission: crate::auth::Permission,
    ) -> Result<bool, AdminError> {
        if !self.auth.users.contains_key(user) || !self.vhosts.contains_key(vhost) {
            return Err(AdminError::BadRequest("vhost_or_user_not_found".into()));
        }
        let new = self
            .auth
            .permissions
            .insert((user.to_owned(), vhost.to_owned()), permission)
            .is_none();
        self.refresh_permissions();
        self.definitions_dirty = true;
        Ok(new)
    }

    /// Removes `user`'s permission in `vhost` (`DELETE
    /// /api/permissions/vhost/user`): their open connections there are
    /// refused their next operation (403), as RabbitMQ's.
    pub fn admin_clear_permission(&mut self, user: &str, vhost: &str) -> Result<(), AdminError> {
        if self
            .auth
            .permissions
            .remove(&(user.to_owned(), vhost.to_owned()))
            .is_none()
        {
            return Err(AdminError::NotFound(format!(
                "no permissions of '{user}' in '{vhost}'"
            )));
        }
        self.refresh_permissions();
        self.definitions_dirty = true;
        Ok(())
    }

    /// Sets `user`'s topic permission on `exchange` in `vhost` (`PUT
    /// /api/topic-permissions/vhost/user`, `rabbitmqctl
    /// set_topic_permissions`); whether it is new. User and vhost must
    /// exist (else RabbitMQ's 400 `vhost_or_user_not_found`); the exchange
    /// need not. Open connections use it from their next operation.
    pub fn admin_set_topic_permission(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: &str,
        permission: crate::auth::TopicPermission,
    ) -> Result<bool, AdminError> {
        if !self.auth.users.contains_key(user) || !self.vhosts.contains_key(vhost) {
            return Err(AdminError::BadRequest("vhost_or_user_not_found".into()));
        }
        let new = self
            .auth
            .topic_permissions
            .insert(
                (user.to_owned(), vhost.to_owned(), exchange.to_owned()),
                permission,
            )
            .is_none();
        self.refresh_permissions();
        self.definitions_dirty = true;
        Ok(new)
    }

    /// Removes `user`'s topic permissions in `vhost` (`DELETE
    /// /api/topic-permissions/vhost/user`): on `exchange` only when given,
    /// else all of them (404 when there was none).
    pub fn admin_clear_topic_permissions(
        &mut self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<(), AdminError> {
        let before = self.auth.topic_permissions.len();
        self.auth
            .topic_permissions
            .retain(|(u, v, x), _| !(u == user && v == vhost && exchange.is_none_or(|e| e == x)));
        if self.auth.topic_permissions.len() == before {
            return Err(AdminError::NotFound(format!(
                "no topic permissions of '{user}' in '{vhost}'"
            )));
        }
        self.refresh_permissions();
        self.definitions_dirty = true;
        Ok(())
    }

    /// The data directory's `definitions.json`: the durable `topology` with
    /// the users, virtual hosts (with their metadata) and permissions, as
    /// a RabbitMQ definitions export, so that they come back at boot.
    pub(super) fn definitions_json(&self, topology: r::definitions::Topology) -> String {
        let mut v = serde_json::to_value(&topology).unwrap_or(serde_json::Value::Null);
        let mut names: Vec<&String> = self.vhosts.keys().collect();
        names.sort();
        if let serde_json::Value::Object(o) = &mut v {
            o.insert("users".into(), self.users_json().into());
            o.insert(
                "vhosts".into(),
                names
                    .iter()
                    .map(|n| vhost_def_json(&self.auth, n))
                    .collect::<Vec<_>>()
                    .into(),
            );
            o.insert(
                "permissions".into(),
                self.auth.permissions_json(None, None).into(),
            );
            o.insert(
                "topic_permissions".into(),
                self.auth.topic_permissions_json(None, None).into(),
            );
        }
        serde_json::to_string_pretty(&v).unwrap_or_default()
    }
}

/// A user's limits as RabbitMQ shows them (`{}` without any).
pub fn user_limits_json(l: &crate::core::UserLimits) -> serde_json::Value {
    let mut o = serde_json::Map::new();
    if let Some(n) = l.max_connections {
        o.insert("max-connections".into(), n.into());
    }
    if let Some(n) = l.max_channels {
        o.insert("max-channels".into(), n.into());
    }
    serde_json::Value::Object(o)
}

/// A user's limits from RabbitMQ's `limits` object (`max-connections`,
/// `max-channels`; a negative value is no limit, as in RabbitMQ).
pub fn user_limits_from_json(v: &serde_json::Value) -> Result<crate::core::UserLimits, String> {
    let get = |k: &str| -> Result<Option<u64>, String> {
        match v.get(k) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(x) => match x.as_i64() {
                Some(n) if n < 0 => Ok(None),
                Some(n) => Ok(u64::try_from(n).ok()),
                None => Err(format!("user limit {k} must be an integer, not {x}")),
            },
        }
    };
    Ok(crate::core::UserLimits {
        max_connections: get("max-connections")?,
        max_channels: get("max-channels")?,
    })
}

/// A virtual host as RabbitMQ's definitions export shows it.
pub fn vhost_def_json(auth: &Auth, name: &str) -> serde_json::Value {
    let meta = auth
        .vhost_meta
        .get(name)
        .cloned()
        .unwrap_or_else(|| crate::auth::VhostMeta {
            description: if name == "/" {
                "Default virtual host"
            } else {
                ""
            }
            .into(),
            tags: Vec::new(),
        });
    serde_json::json!({
        "name": name,
        "limits": [],
        "metadata": {"description": meta.description, "tags": meta.tags},
    })
}
