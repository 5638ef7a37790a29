//! Test support: a seeded PRNG and a scripted broker handler.
#![allow(dead_code)]

use amqp_codec::types::method::*;
use amqp_codec::types::{Method, ReplyCode, ShortString};
use amqp_codec::{Answer, Connection, Decision, Event};

/// splitmix64: small, seedable, reproducible.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in lo..=hi.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// A minimal broker policy answering through the server role's API:
/// accepts credentials (guest/guest) and vhosts, answers declares, qos,
/// consume, cancel, confirm.select, and routes each publish to the
/// default-exchange queue named by its routing key, delivering to the
/// first consumer of that queue (on any channel), and confirms publishes.
#[derive(Default, Debug)]
pub struct MiniBroker {
    /// (queue, channel, consumer tag, no_ack)
    pub consumers: Vec<(ShortString, u16, ShortString, bool)>,
    /// Messages with no consumer yet: (queue, message)
    pub parked: Vec<(ShortString, amqp_codec::Message)>,
    pub next_tag: u64,
    pub acks_received: u64,
    pub published: u64,
    /// (exchange, routing key, queue) from queue.bind; a publish to a named
    /// exchange goes to the queues bound with its routing key (direct
    /// semantics), a publish to "" to the queue its routing key names.
    pub bindings: Vec<(ShortString, ShortString, ShortString)>,
    pub events: Vec<Event>,
}

impl MiniBroker {
    pub fn handle(&mut self, s: &mut Connection) {
        while let Some(e) = s.poll_event() {
            match &e {
                Event::Decision { id, decision } => {
                    let answer = match decision {
                        Decision::Authenticate { credentials, .. } => {
                            if credentials.password() == Some("guest")
                                || credentials.username() == Some("")
                            {
                                Answer::Accept
                            } else {
                                Answer::refuse(
                                    ReplyCode::ACCESS_REFUSED,
                                    "ACCESS_REFUSED - Login was refused",
                                )
                            }
                        }
                        _ => Answer::Accept,
                    };
                    s.decide(*id, answer).unwrap();
                }
                Event::Method { channel, method } => self.on_method(s, *channel, method),
                Event::Message {
                    channel,
                    message,
                    seqno,
                } => {
                    self.published += 1;
                    if let Some(n) = seqno {
                        s.ack(*channel, *n, false).unwrap();
                    }
                    let Method::BasicPublish(p) = &message.method else {
                        panic!()
                    };
                    if p.exchange.is_empty() {
                        self.parked
                            .push((p.routing_key.clone(), amqp_codec::Message::clone(message)));
                    } else {
                        for (_, _, q) in self
                            .bindings
                            .iter()
                            .filter(|b| b.0 == p.exchange && b.1 == p.routing_key)
                        {
                            self.parked
                                .push((q.clone(), amqp_codec::Message::clone(message)));
                        }
                    }
                    self.flush(s);
                }
                Event::ChannelClosed { channel, .. } => {
                    self.consumers.retain(|c| c.1 != *channel);
                }
                _ => {}
            }
            self.events.push(e);
        }
    }

    fn flush(&mut self, s: &mut Connection) {
        let mut keep = vec![];
        for (q, m) in std::mem::take(&mut self.parked) {
            let Some((_, ch, tag, _)) = self.consumers.iter().find(|c| c.0 == q).cloned() else {
                keep.push((q, m));
                continue;
            };
            let Method::BasicPublish(p) = &m.method else {
                panic!()
            };
            let d = BasicDeliver {
                consumer_tag: tag,
                delivery_tag: 0,
                redelivered: false,
                exchange: p.exchange.clone(),
                routing_key: p.routing_key.clone(),
            };
            s.send_content(ch, d.into(), &m.properties, m.body.clone())
                .unwrap();
        }
        self.parked = keep;
    }

    fn on_method(&mut self, s: &mut Connection, ch: u16, m: &Method) {
        match m {
            Method::QueueDeclare(q) if !q.nowait => s
                .send_method(
                    ch,
                    QueueDeclareOk {
                        queue: q.queue.clone(),
                        message_count: 0,
                        consumer_count: 0,
                    },
                )
                .unwrap(),
            Method::BasicQos(q) => {
                if q.prefetch_size != 0 {
                    s.refuse(
                        ch,
                        ReplyCode::NOT_IMPLEMENTED,
                        "NOT_IMPLEMENTED - prefetch_size!=0",
                    )
                    .unwrap();
                } else {
                    s.send_method(ch, BasicQosOk {}).unwrap()
                }
            }
            Method::ConfirmSelect(c) if !c.nowait => s.send_method(ch, ConfirmSelectOk {}).unwrap(),
            Method::BasicConsume(c) => {
                self.next_tag += 1;
                let tag = if c.consumer_tag.is_empty() {
                    ShortString::try_from(format!("ctag-{}", self.next_tag)).unwrap()
                } else {
                    c.consumer_tag.clone()
                };
                self.consumers
                    .push((c.queue.clone(), ch, tag.clone(), c.no_ack));
                if !c.nowait {
                    s.send_method(ch, BasicConsumeOk { consumer_tag: tag })
                        .unwrap();
                }
                self.flush(s);
            }
            Method::BasicCancel(c) => {
                self.consumers.retain(|x| x.2 != c.consumer_tag);
                if !c.nowait {
                    s.send_method(
                        ch,
                        BasicCancelOk {
                            consumer_tag: c.consumer_tag.clone(),
                        },
                    )
                    .unwrap();
                }
            }
            Method::BasicAck(_) => self.acks_received += 1,
            Method::ChannelFlow(f) => {
                if f.active {
                    s.send_method(ch, ChannelFlowOk { active: true }).unwrap()
                } else {
                    s.refuse(
                        ch,
                        ReplyCode::NOT_IMPLEMENTED,
                        "NOT_IMPLEMENTED - active=false",
                    )
                    .unwrap()
                }
            }
            Method::QueueDelete(q) if !q.nowait => s
                .send_method(ch, QueueDeleteOk { message_count: 0 })
                .unwrap(),
            Method::ExchangeDeclare(e) if !e.nowait => {
                s.send_method(ch, ExchangeDeclareOk {}).unwrap()
            }
            Method::QueueBind(b) => {
                self.bindings
                    .push((b.exchange.clone(), b.routing_key.clone(), b.queue.clone()));
                if !b.nowait {
                    s.send_method(ch, QueueBindOk {}).unwrap()
                }
            }
            Method::QueueUnbind(b) => {
                self.bindings
                    .retain(|x| !(x.0 == b.exchange && x.1 == b.routing_key && x.2 == b.queue));
                s.send_method(ch, QueueUnbindOk {}).unwrap()
            }
            Method::ExchangeDelete(e) => {
                self.bindings.retain(|x| x.0 != e.exchange);
                if !e.nowait {
                    s.send_method(ch, ExchangeDeleteOk {}).unwrap()
                }
            }
            Method::ConnectionUpdateSecret(_) => {
                s.send_method(0, ConnectionUpdateSecretOk {}).unwrap()
            }
            _ => {}
        }
    }
}
