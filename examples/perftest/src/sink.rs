//! A broker stand-in built on amqp-codec's server role, to measure
//! amqp-perftest's own ceiling: it accepts any credentials and vhost,
//! answers declares, binds, qos, confirm.select and consume, discards
//! publishes (confirming them, one `multiple` ack per batch) and floods
//! each consumer with deliveries as fast as its prefetch and the socket
//! allow.

use crate::link::{Link, OUT_HIGH};
use amqp_codec::types::method::{
    BasicCancelOk, BasicConsumeOk, BasicDeliver, BasicQosOk, ConfirmSelectOk, ExchangeDeclareOk,
    ExchangeDeleteOk, QueueBindOk, QueueDeclareOk, QueueDeleteOk, QueuePurgeOk, QueueUnbindOk,
};
use amqp_codec::types::{BasicProperties, Method, ReplyCode, ShortString};
use amqp_codec::{Answer, Connection, Event, ServerConfig};
use bytes::Bytes;
use std::collections::HashMap;
use std::time::Instant;
use tokio::net::TcpListener;

/// Deliveries generated per loop turn before the sink reads and yields.
const DELIVER_BATCH: usize = 512;

/// Sink settings.
#[derive(Debug, Clone)]
pub struct SinkConfig {
    /// Body size of delivered messages.
    pub body_size: usize,
}

/// Binds `addr`; serve with [`serve`].
pub async fn bind(addr: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).await.map_err(|e| {
        format!("cannot listen on {addr}: {e} (is the port in use? give another with --listen)")
    })
}

/// Accepts connections forever, one task each.
pub async fn serve(listener: TcpListener, cfg: SinkConfig) {
    let body = Bytes::from(vec![0u8; cfg.body_size]);
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let body = body.clone();
        tokio::spawn(async move {
            let server = ServerConfig {
                heartbeat: 0,
                ..ServerConfig::default()
            };
            let link = Link::new(Connection::server(server, Instant::now()), tcp);
            let mut s = Session {
                link,
                body,
                props: BasicProperties::default(),
                channels: HashMap::new(),
                queues: 0,
            };
            if let Err(e) = s.run().await {
                eprintln!("sink: {peer}: {e}");
            }
        });
    }
}

/// One consumer on a sink channel.
#[derive(Debug)]
struct Flood {
    tag: ShortString,
    no_ack: bool,
    queue: ShortString,
}

#[derive(Debug, Default)]
struct SinkChannel {
    prefetch: u16,
    consumers: Vec<Flood>,
    next: usize,
    issued: u64,
    acked: u64,
    /// Highest publish sequence number to confirm.
    to_confirm: Option<u64>,
}

struct Session {
    link: Link,
    body: Bytes,
    props: BasicProperties,
    channels: HashMap<u16, SinkChannel>,
    queues: u64,
}

impl Session {
    fn reply(&mut self, ch: u16, m: impl Into<Method>) -> Result<(), String> {
        self.link.conn.send_method(ch, m).map_err(|e| e.to_string())
    }

    fn on_event(&mut self, e: Event) -> Result<bool, String> {
        match e {
            Event::Decision { id, .. } => {
                self.link
                    .conn
                    .decide(id, Answer::Accept)
                    .map_err(|e| e.to_string())?;
            }
            Event::ChannelOpened { channel } => {
                self.channels.insert(channel, SinkChannel::default());
            }
            Event::ChannelClosed { channel, .. } => {
                self.channels.remove(&channel);
            }
            Event::Message { channel, seqno, .. } => {
                if let (Some(s), Some(c)) = (seqno, self.channels.get_mut(&channel)) {
                    c.to_confirm = Some(s);
                }
            }
            Event::Method { channel, method } => self.on_method(channel, method)?,
            Event::Closed { .. } => return Ok(false),
            _ => {}
        }
        Ok(true)
    }

    fn on_method(&mut self, ch: u16, m: Method) -> Result<(), String> {
        match m {
            Method::ExchangeDeclare(d) if !d.nowait => self.reply(ch, ExchangeDeclareOk {}),
            Method::ExchangeDelete(d) if !d.nowait => self.reply(ch, ExchangeDeleteOk {}),
            Method::QueueDeclare(d) if !d.nowait => {
                let queue = if d.queue.is_empty() {
                    self.queues += 1;
                    ShortString::try_from(format!("amq.gen-sink-{}", self.queues).as_str())
                        .unwrap_or_default()
                } else {
                    d.queue
                };
                self.reply(
                    ch,
                    QueueDeclareOk {
                        queue,
                        ..Default::default()
                    },
                )
            }
            Method::QueueBind(b) if !b.nowait => self.reply(ch, QueueBindOk {}),
            Method::QueueUnbind(_) => self.reply(ch, QueueUnbindOk {}),
            Method::QueuePurge(p) if !p.nowait => self.reply(ch, QueuePurgeOk::default()),
            Method::QueueDelete(d) if !d.nowait => self.reply(ch, QueueDeleteOk::default()),
            Method::BasicQos(q) => {
                if let Some(c) = self.channels.get_mut(&ch) {
                    c.prefetch = match (c.prefetch, q.prefetch_count) {
                        (0, n) | (n, 0) => n,
                        (a, b) => a.min(b),
                    };
                }
                self.reply(ch, BasicQosOk {})
            }
            Method::ConfirmSelect(c) => {
                if c.nowait {
                    Ok(())
                } else {
                    self.reply(ch, ConfirmSelectOk {})
                }
            }
            Method::BasicConsume(c) => {
                let tag = if c.consumer_tag.is_empty() {
                    ShortString::try_from(format!("amq.ctag-sink-{ch}").as_str())
                        .unwrap_or_default()
                } else {
                    c.consumer_tag.clone()
                };
                if !c.nowait {
                    self.reply(
                        ch,
                        BasicConsumeOk {
                            consumer_tag: tag.clone(),
                        },
                    )?;
                }
                if let Some(s) = self.channels.get_mut(&ch) {
                    s.consumers.push(Flood {
                        tag,
                        no_ack: c.no_ack,
                        queue: c.queue,
                    });
                }
                Ok(())
            }
            Method::BasicCancel(c) => {
                if let Some(s) = self.channels.get_mut(&ch) {
                    s.consumers.retain(|f| f.tag != c.consumer_tag);
                }
                if c.nowait {
                    Ok(())
                } else {
                    self.reply(
                        ch,
                        BasicCancelOk {
                            consumer_tag: c.consumer_tag,
                        },
                    )
                }
            }
            Method::BasicAck(a) => {
                if let Some(s) = self.channels.get_mut(&ch) {
                    // The client acks in order: a multiple ack settles up
                    // to its tag, a single one settles one more.
                    s.acked = if a.multiple {
                        s.acked.max(a.delivery_tag)
                    } else {
                        s.acked + 1
                    };
                }
                Ok(())
            }
            Method::BasicNack(_) | Method::BasicReject(_) => Ok(()),
            // Requests sent with nowait need no answer.
            Method::ExchangeDeclare(_)
            | Method::ExchangeDelete(_)
            | Method::QueueDeclare(_)
            | Method::QueueBind(_)
            | Method::QueuePurge(_)
            | Method::QueueDelete(_) => Ok(()),
            other => self
                .link
                .conn
                .refuse(
                    ch,
                    ReplyCode::NOT_IMPLEMENTED,
                    &format!("the sink does not implement {}", other.name()),
                )
                .map_err(|e| e.to_string()),
        }
    }

    /// Confirms publishes (one multiple ack per channel) and generates
    /// deliveries while credit and the write buffer allow. Returns whether
    /// anything was queued.
    fn produce(&mut self) -> Result<bool, String> {
        let mut any = false;
        let conn = &mut self.link.conn;
        for (&ch, c) in self.channels.iter_mut() {
            if let Some(s) = c.to_confirm.take() {
                conn.ack(ch, s, true).map_err(|e| e.to_string())?;
                any = true;
            }
        }
        let mut n = 0;
        for (&ch, c) in self.channels.iter_mut() {
            if c.consumers.is_empty() {
                continue;
            }
            while n < DELIVER_BATCH && conn.bytes_queued() < OUT_HIGH {
                let i = c.next % c.consumers.len();
                let f = &c.consumers[i];
                let no_ack = f.no_ack;
                let has_credit =
                    no_ack || c.prefetch == 0 || c.issued - c.acked < u64::from(c.prefetch);
                if !has_credit {
                    break;
                }
                let d = BasicDeliver {
                    consumer_tag: f.tag.clone(),
                    delivery_tag: 0,
                    redelivered: false,
                    exchange: ShortString::EMPTY,
                    routing_key: f.queue.clone(),
                };
                let tag = conn
                    .send_content(ch, Method::BasicDeliver(d), &self.props, self.body.clone())
                    .map_err(|e| e.to_string())?;
                c.issued = tag.unwrap_or(c.issued + 1);
                if no_ack {
                    c.acked = c.issued;
                }
                c.next = c.next.wrapping_add(1);
                n += 1;
                any = true;
            }
        }
        Ok(any)
    }

    async fn run(&mut self) -> Result<(), String> {
        let io = |e: std::io::Error| format!("connection lost: {e}");
        loop {
            let mut progress = false;
            for _ in 0..4 {
                if !self.link.try_fill().map_err(io)? {
                    break;
                }
                progress = true;
                while let Some(e) = self.link.conn.poll_event() {
                    if !self.on_event(e)? {
                        let _ = self.link.try_flush();
                        return Ok(());
                    }
                }
            }
            while let Some(e) = self.link.conn.poll_event() {
                if !self.on_event(e)? {
                    let _ = self.link.try_flush();
                    return Ok(());
                }
            }
            if self.link.conn.is_open() && self.link.pending_out() < OUT_HIGH {
                progress |= self.produce()?;
            }
            progress |= self.link.try_flush().map_err(io)?;
            if self.link.eof() || self.link.conn.is_closed() {
                let _ = self.link.try_flush();
                return Ok(());
            }
            if progress {
                tokio::task::yield_now().await;
            } else {
                self.link.wait(true, None, None).await.map_err(io)?;
            }
        }
    }
}
