//! The protocol table: every AMQP 0-9-1 method and basic property, written
//! down once.
//!
//! [`for_each_method!`](crate::for_each_method) and
//! [`for_each_basic_property!`](crate::for_each_basic_property) hand their rows to a
//! caller's macro, in the spirit of wasmparser's `for_each_operator!`. This
//! crate generates the method structs, the [`Method`](crate::Method) and
//! [`MethodKind`](crate::MethodKind) enums, ids, names, protocol metadata and
//! `arbitrary` impls from them; `amqp-wire` generates its parser and
//! serializer from the same rows. A new method is one row here.
//!
//! A method row reads
//!
//! ```text
//! Name(class-id, method-id, "class.method", sender, content, [replies], [nowait-field]) {
//!     field: type = "spec-name",
//!     ...
//! }
//! ```
//!
//! * `sender`: `client`, `server` or `both`: who may send the method.
//! * `content`: `content` if a content header and body follow the method,
//!   `no_content` otherwise.
//! * `[replies]`: the methods that answer it when it is sent as a synchronous
//!   request (empty for asynchronous methods and for replies themselves;
//!   `basic.get` has two). A method is synchronous exactly when this list is
//!   non-empty, as `synchronous: true` in RabbitMQ's JSON spec.
//! * `[nowait-field]`: the name of the bit that suppresses the reply, if any.
//! * field types are the Rust types of the spec's domains: `u8` octet, `u16`
//!   short, `u32` long, `u64` longlong/timestamp, `bool` bit,
//!   [`ShortString`](crate::ShortString), [`LongString`](crate::LongString),
//!   [`FieldTable`](crate::FieldTable). Consecutive `bool` fields share one
//!   octet on the wire, low bit first.
//!
//! The test `tests/spec_table.rs` checks every row against
//! `spec/amqp-rabbitmq-0.9.1.json`.

/// Hands every AMQP 0-9-1 method row to the macro `$m` (see the
/// [module documentation](crate::table) for the row format).
///
/// ```
/// macro_rules! count {
///     ($( $name:ident ($cid:literal, $mid:literal, $($rest:tt)*) { $($body:tt)* } )*) => {
///         [$( stringify!($name) ),*].len()
///     };
/// }
/// assert_eq!(amqp_types::for_each_method!(count), 66);
/// ```
#[macro_export]
macro_rules! for_each_method {
    ($m:ident) => {
        $m! {
            ConnectionStart(10, 10, "connection.start", server, no_content, [ConnectionStartOk], []) {
                version_major: u8 = "version-major",
                version_minor: u8 = "version-minor",
                server_properties: FieldTable = "server-properties",
                mechanisms: LongString = "mechanisms",
                locales: LongString = "locales",
            }
            ConnectionStartOk(10, 11, "connection.start-ok", client, no_content, [], []) {
                client_properties: FieldTable = "client-properties",
                mechanism: ShortString = "mechanism",
                response: LongString = "response",
                locale: ShortString = "locale",
            }
            ConnectionSecure(10, 20, "connection.secure", server, no_content, [ConnectionSecureOk], []) {
                challenge: LongString = "challenge",
            }
            ConnectionSecureOk(10, 21, "connection.secure-ok", client, no_content, [], []) {
                response: LongString = "response",
            }
            ConnectionTune(10, 30, "connection.tune", server, no_content, [ConnectionTuneOk], []) {
                channel_max: u16 = "channel-max",
                frame_max: u32 = "frame-max",
                heartbeat: u16 = "heartbeat",
            }
            ConnectionTuneOk(10, 31, "connection.tune-ok", client, no_content, [], []) {
                channel_max: u16 = "channel-max",
                frame_max: u32 = "frame-max",
                heartbeat: u16 = "heartbeat",
            }
            ConnectionOpen(10, 40, "connection.open", client, no_content, [ConnectionOpenOk], []) {
                virtual_host: ShortString = "virtual-host",
                capabilities: ShortString = "capabilities",
                insist: bool = "insist",
            }
            ConnectionOpenOk(10, 41, "connection.open-ok", server, no_content, [], []) {
                known_hosts: ShortString = "known-hosts",
            }
            ConnectionClose(10, 50, "connection.close", both, no_content, [ConnectionCloseOk], []) {
                reply_code: u16 = "reply-code",
                reply_text: ShortString = "reply-text",
                class_id: u16 = "class-id",
                method_id: u16 = "method-id",
            }
            ConnectionCloseOk(10, 51, "connection.close-ok", both, no_content, [], []) {}
            ConnectionBlocked(10, 60, "connection.blocked", server, no_content, [], []) {
                reason: ShortString = "reason",
            }
            ConnectionUnblocked(10, 61, "connection.unblocked", server, no_content, [], []) {}
            ConnectionUpdateSecret(10, 70, "connection.update-secret", client, no_content, [ConnectionUpdateSecretOk], []) {
                new_secret: LongString = "new-secret",
                reason: ShortString = "reason",
            }
            ConnectionUpdateSecretOk(10, 71, "connection.update-secret-ok", server, no_content, [], []) {}
            ChannelOpen(20, 10, "channel.open", client, no_content, [ChannelOpenOk], []) {
                out_of_band: ShortString = "out-of-band",
            }
            ChannelOpenOk(20, 11, "channel.open-ok", server, no_content, [], []) {
                channel_id: LongString = "channel-id",
            }
            ChannelFlow(20, 20, "channel.flow", both, no_content, [ChannelFlowOk], []) {
                active: bool = "active",
            }
            ChannelFlowOk(20, 21, "channel.flow-ok", both, no_content, [], []) {
                active: bool = "active",
            }
            ChannelClose(20, 40, "channel.close", both, no_content, [ChannelCloseOk], []) {
                reply_code: u16 = "reply-code",
                reply_text: ShortString = "reply-text",
                class_id: u16 = "class-id",
                method_id: u16 = "method-id",
            }
            ChannelCloseOk(20, 41, "channel.close-ok", both, no_content, [], []) {}
            AccessRequest(30, 10, "access.request", client, no_content, [AccessRequestOk], []) {
                realm: ShortString = "realm",
                exclusive: bool = "exclusive",
                passive: bool = "passive",
                active: bool = "active",
                write: bool = "write",
                read: bool = "read",
            }
            AccessRequestOk(30, 11, "access.request-ok", server, no_content, [], []) {
                ticket: u16 = "ticket",
            }
            ExchangeDeclare(40, 10, "exchange.declare", client, no_content, [ExchangeDeclareOk], [nowait]) {
                ticket: u16 = "ticket",
                exchange: ShortString = "exchange",
                kind: ShortString = "type",
                passive: bool = "passive",
                durable: bool = "durable",
                auto_delete: bool = "auto-delete",
                internal: bool = "internal",
                nowait: bool = "nowait",
                arguments: FieldTable = "arguments",
            }
            ExchangeDeclareOk(40, 11, "exchange.declare-ok", server, no_content, [], []) {}
            ExchangeDelete(40, 20, "exchange.delete", client, no_content, [ExchangeDeleteOk], [nowait]) {
                ticket: u16 = "ticket",
                exchange: ShortString = "exchange",
                if_unused: bool = "if-unused",
                nowait: bool = "nowait",
            }
            ExchangeDeleteOk(40, 21, "exchange.delete-ok", server, no_content, [], []) {}
            ExchangeBind(40, 30, "exchange.bind", client, no_content, [ExchangeBindOk], [nowait]) {
                ticket: u16 = "ticket",
                destination: ShortString = "destination",
                source: ShortString = "source",
                routing_key: ShortString = "routing-key",
                nowait: bool = "nowait",
                arguments: FieldTable = "arguments",
            }
            ExchangeBindOk(40, 31, "exchange.bind-ok", server, no_content, [], []) {}
            ExchangeUnbind(40, 40, "exchange.unbind", client, no_content, [ExchangeUnbindOk], [nowait]) {
                ticket: u16 = "ticket",
                destination: ShortString = "destination",
                source: ShortString = "source",
                routing_key: ShortString = "routing-key",
                nowait: bool = "nowait",
                arguments: FieldTable = "arguments",
            }
            ExchangeUnbindOk(40, 51, "exchange.unbind-ok", server, no_content, [], []) {}
            QueueDeclare(50, 10, "queue.declare", client, no_content, [QueueDeclareOk], [nowait]) {
                ticket: u16 = "ticket",
                queue: ShortString = "queue",
                passive: bool = "passive",
                durable: bool = "durable",
                exclusive: bool = "exclusive",
                auto_delete: bool = "auto-delete",
                nowait: bool = "nowait",
                arguments: FieldTable = "arguments",
            }
            QueueDeclareOk(50, 11, "queue.declare-ok", server, no_content, [], []) {
                queue: ShortString = "queue",
                message_count: u32 = "message-count",
                consumer_count: u32 = "consumer-count",
            }
            QueueBind(50, 20, "queue.bind", client, no_content, [QueueBindOk], [nowait]) {
                ticket: u16 = "ticket",
                queue: ShortString = "queue",
                exchange: ShortString = "exchange",
                routing_key: ShortString = "routing-key",
                nowait: bool = "nowait",
                arguments: FieldTable = "arguments",
            }
            QueueBindOk(50, 21, "queue.bind-ok", server, no_content, [], []) {}
            QueuePurge(50, 30, "queue.purge", client, no_content, [QueuePurgeOk], [nowait]) {
                ticket: u16 = "ticket",
                queue: ShortString = "queue",
                nowait: bool = "nowait",
            }
            QueuePurgeOk(50, 31, "queue.purge-ok", server, no_content, [], []) {
                message_count: u32 = "message-count",
            }
            QueueDelete(50, 40, "queue.delete", client, no_content, [QueueDeleteOk], [nowait]) {
                ticket: u16 = "ticket",
                queue: ShortString = "queue",
                if_unused: bool = "if-unused",
                if_empty: bool = "if-empty",
                nowait: bool = "nowait",
            }
            QueueDeleteOk(50, 41, "queue.delete-ok", server, no_content, [], []) {
                message_count: u32 = "message-count",
            }
            QueueUnbind(50, 50, "queue.unbind", client, no_content, [QueueUnbindOk], []) {
                ticket: u16 = "ticket",
                queue: ShortString = "queue",
                exchange: ShortString = "exchange",
                routing_key: ShortString = "routing-key",
                arguments: FieldTable = "arguments",
            }
            QueueUnbindOk(50, 51, "queue.unbind-ok", server, no_content, [], []) {}
            BasicQos(60, 10, "basic.qos", client, no_content, [BasicQosOk], []) {
                prefetch_size: u32 = "prefetch-size",
                prefetch_count: u16 = "prefetch-count",
                global: bool = "global",
            }
            BasicQosOk(60, 11, "basic.qos-ok", server, no_content, [], []) {}
            BasicConsume(60, 20, "basic.consume", client, no_content, [BasicConsumeOk], [nowait]) {
                ticket: u16 = "ticket",
                queue: ShortString = "queue",
                consumer_tag: ShortString = "consumer-tag",
                no_local: bool = "no-local",
                no_ack: bool = "no-ack",
                exclusive: bool = "exclusive",
                nowait: bool = "nowait",
                arguments: FieldTable = "arguments",
            }
            BasicConsumeOk(60, 21, "basic.consume-ok", server, no_content, [], []) {
                consumer_tag: ShortString = "consumer-tag",
            }
            BasicCancel(60, 30, "basic.cancel", both, no_content, [BasicCancelOk], [nowait]) {
                consumer_tag: ShortString = "consumer-tag",
                nowait: bool = "nowait",
            }
            BasicCancelOk(60, 31, "basic.cancel-ok", both, no_content, [], []) {
                consumer_tag: ShortString = "consumer-tag",
            }
            BasicPublish(60, 40, "basic.publish", client, content, [], []) {
                ticket: u16 = "ticket",
                exchange: ShortString = "exchange",
                routing_key: ShortString = "routing-key",
                mandatory: bool = "mandatory",
                immediate: bool = "immediate",
            }
            BasicReturn(60, 50, "basic.return", server, content, [], []) {
                reply_code: u16 = "reply-code",
                reply_text: ShortString = "reply-text",
                exchange: ShortString = "exchange",
                routing_key: ShortString = "routing-key",
            }
            BasicDeliver(60, 60, "basic.deliver", server, content, [], []) {
                consumer_tag: ShortString = "consumer-tag",
                delivery_tag: u64 = "delivery-tag",
                redelivered: bool = "redelivered",
                exchange: ShortString = "exchange",
                routing_key: ShortString = "routing-key",
            }
            BasicGet(60, 70, "basic.get", client, no_content, [BasicGetOk, BasicGetEmpty], []) {
                ticket: u16 = "ticket",
                queue: ShortString = "queue",
                no_ack: bool = "no-ack",
            }
            BasicGetOk(60, 71, "basic.get-ok", server, content, [], []) {
                delivery_tag: u64 = "delivery-tag",
                redelivered: bool = "redelivered",
                exchange: ShortString = "exchange",
                routing_key: ShortString = "routing-key",
                message_count: u32 = "message-count",
            }
            BasicGetEmpty(60, 72, "basic.get-empty", server, no_content, [], []) {
                cluster_id: ShortString = "cluster-id",
            }
            BasicAck(60, 80, "basic.ack", both, no_content, [], []) {
                delivery_tag: u64 = "delivery-tag",
                multiple: bool = "multiple",
            }
            BasicReject(60, 90, "basic.reject", client, no_content, [], []) {
                delivery_tag: u64 = "delivery-tag",
                requeue: bool = "requeue",
            }
            BasicRecoverAsync(60, 100, "basic.recover-async", client, no_content, [], []) {
                requeue: bool = "requeue",
            }
            BasicRecover(60, 110, "basic.recover", client, no_content, [BasicRecoverOk], []) {
                requeue: bool = "requeue",
            }
            BasicRecoverOk(60, 111, "basic.recover-ok", server, no_content, [], []) {}
            BasicNack(60, 120, "basic.nack", both, no_content, [], []) {
                delivery_tag: u64 = "delivery-tag",
                multiple: bool = "multiple",
                requeue: bool = "requeue",
            }
            TxSelect(90, 10, "tx.select", client, no_content, [TxSelectOk], []) {}
            TxSelectOk(90, 11, "tx.select-ok", server, no_content, [], []) {}
            TxCommit(90, 20, "tx.commit", client, no_content, [TxCommitOk], []) {}
            TxCommitOk(90, 21, "tx.commit-ok", server, no_content, [], []) {}
            TxRollback(90, 30, "tx.rollback", client, no_content, [TxRollbackOk], []) {}
            TxRollbackOk(90, 31, "tx.rollback-ok", server, no_content, [], []) {}
            ConfirmSelect(85, 10, "confirm.select", client, no_content, [ConfirmSelectOk], [nowait]) {
                nowait: bool = "nowait",
            }
            ConfirmSelectOk(85, 11, "confirm.select-ok", server, no_content, [], []) {}
        }
    };
}

/// Hands the 14 basic-class content properties to the macro `$m`, in wire
/// order, each as `field: Type = "spec-name" @ flag-bit`.
///
/// The flag bit is the bit of the property-flags word that announces the
/// property (bit 15 is the first property).
///
/// ```
/// macro_rules! names {
///     ($( $f:ident : $ty:ty = $name:literal @ $bit:literal ),* $(,)?) => { [$($name),*] };
/// }
/// let names = amqp_types::for_each_basic_property!(names);
/// assert_eq!(names.len(), 14);
/// assert_eq!(names[0], "content-type");
/// ```
#[macro_export]
macro_rules! for_each_basic_property {
    ($m:ident) => {
        $m! {
            content_type: ShortString = "content-type" @ 15,
            content_encoding: ShortString = "content-encoding" @ 14,
            headers: FieldTable = "headers" @ 13,
            delivery_mode: u8 = "delivery-mode" @ 12,
            priority: u8 = "priority" @ 11,
            correlation_id: ShortString = "correlation-id" @ 10,
            reply_to: ShortString = "reply-to" @ 9,
            expiration: ShortString = "expiration" @ 8,
            message_id: ShortString = "message-id" @ 7,
            timestamp: u64 = "timestamp" @ 6,
            kind: ShortString = "type" @ 5,
            user_id: ShortString = "user-id" @ 4,
            app_id: ShortString = "app-id" @ 3,
            cluster_id: ShortString = "cluster-id" @ 2,
        }
    };
}
