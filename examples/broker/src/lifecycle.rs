//! What a queue's arguments say about its messages' lifecycle (TTL,
//! expiry, dead-lettering, length limits, priorities), and the `x-death`
//! bookkeeping of dead-lettered messages, as RabbitMQ 3.10 does them.
//!
//! Pure functions of their inputs: the core calls them with its own time.

use amqp_types::{BasicProperties, FieldArray, FieldTable, FieldValue, LongString, ShortString};

use crate::queue::StreamStart;

/// What happens when a queue is full (`x-overflow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overflow {
    /// Drop (dead-letter) the oldest message.
    #[default]
    DropHead,
    /// Refuse the new message (nack under confirms).
    RejectPublish,
    /// Refuse it and dead-letter it.
    RejectPublishDlx,
}

/// A queue's type (`x-queue-type`), as far as a client can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueKind {
    /// `classic` (the default).
    #[default]
    Classic,
    /// `quorum`: every message persisted, requeued messages served first,
    /// delivery counts and `x-delivery-limit`.
    Quorum,
    /// `stream`.
    Stream,
}

impl QueueKind {
    /// The type an `x-queue-type` argument names (classic when absent or
    /// unknown: the declaration checks refuse unknown types first).
    pub fn from_arguments(args: &FieldTable) -> QueueKind {
        match args.get("x-queue-type") {
            Some(FieldValue::LongString(t)) if t.as_bytes() == b"quorum" => QueueKind::Quorum,
            Some(FieldValue::LongString(t)) if t.as_bytes() == b"stream" => QueueKind::Stream,
            _ => QueueKind::Classic,
        }
    }

    /// RabbitMQ's module name for the type, as its error texts say it.
    pub fn module(self) -> &'static str {
        match self {
            QueueKind::Classic => "rabbit_classic_queue",
            QueueKind::Quorum => "rabbit_quorum_queue",
            QueueKind::Stream => "rabbit_stream_queue",
        }
    }

    /// The queue arguments this type accepts, of those RabbitMQ 3.10 knows
    /// (`ARGUMENTS`); a known argument outside the list is refused.
    fn supports(self, key: &str) -> bool {
        match self {
            QueueKind::Classic => matches!(
                key,
                "x-expires"
                    | "x-message-ttl"
                    | "x-dead-letter-exchange"
                    | "x-dead-letter-routing-key"
                    | "x-max-length"
                    | "x-max-length-bytes"
                    | "x-max-priority"
                    | "x-overflow"
                    | "x-queue-mode"
                    | "x-single-active-consumer"
                    | "x-queue-type"
                    | "x-queue-master-locator"
            ),
            QueueKind::Quorum => matches!(
                key,
                "x-expires"
                    | "x-message-ttl"
                    | "x-dead-letter-exchange"
                    | "x-dead-letter-routing-key"
                    | "x-max-length"
                    | "x-max-length-bytes"
                    | "x-max-in-memory-length"
                    | "x-max-in-memory-bytes"
                    | "x-overflow"
                    | "x-single-active-consumer"
                    | "x-queue-type"
                    | "x-quorum-initial-group-size"
                    | "x-delivery-limit"
                    | "x-dead-letter-strategy"
                    | "x-queue-leader-locator"
            ),
            QueueKind::Stream => matches!(
                key,
                "x-queue-type"
                    | "x-max-length-bytes"
                    | "x-max-age"
                    | "x-stream-max-segment-size-bytes"
                    | "x-initial-cluster-size"
                    | "x-queue-leader-locator"
            ),
        }
    }

    /// The first argument (in the table's order) that RabbitMQ knows but
    /// this type refuses; its text is "invalid arg 'K' for queue 'Q' in
    /// vhost 'V' of queue type M". Unknown arguments are ignored.
    pub fn refused_argument(self, args: &FieldTable) -> Option<&str> {
        args.iter()
            .filter_map(|(k, _)| k.as_str())
            .find(|k| ARGUMENTS.contains(k) && !self.supports(k))
    }
}

/// `args` without the arguments RabbitMQ knows that queues of `kind` do not
/// take: a redeclaration compares only the others.
pub fn supported_arguments(kind: QueueKind, args: &FieldTable) -> FieldTable {
    let mut out = FieldTable::with_capacity(args.len());
    for (k, v) in args.iter() {
        let key = k.as_str().unwrap_or_default();
        if !ARGUMENTS.contains(&key) || kind.supports(key) {
            out.push(k.clone(), v.clone());
        }
    }
    out
}

/// The queue arguments RabbitMQ 3.10 knows of (those of any queue type).
const ARGUMENTS: &[&str] = &[
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-dead-letter-strategy",
    "x-queue-leader-locator",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// A queue's lifecycle settings, read from its arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArgs {
    /// `x-queue-type`.
    pub kind: QueueKind,
    /// `x-message-ttl`, ms.
    pub message_ttl: Option<u64>,
    /// `x-expires`, ms.
    pub expires: Option<u64>,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<ShortString>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<ShortString>,
    /// `x-max-length`.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// Whether `x-overflow` was given (it then wins over a policy's).
    pub overflow_declared: bool,
    /// `x-max-priority`.
    pub max_priority: Option<u8>,
    /// `x-single-active-consumer`: only the oldest consumer receives.
    pub single_active: bool,
    /// `x-delivery-limit` (quorum queues): a message returned more often
    /// than this is dead-lettered (`delivery_limit`).
    pub delivery_limit: Option<u64>,
    /// `x-max-age` (streams), ms.
    pub max_age_ms: Option<u64>,
    /// `x-stream-max-segment-size-bytes` (streams).
    pub segment_size: u64,
}

/// Where a stream consumer starts, from its `x-stream-offset` argument
/// (`now_ms`: the time, for intervals such as `"1h"`): absent, `next`;
/// `first`, `last`, `next`; an integer offset (a negative one: `first`); a
/// timestamp (seconds); an interval back from now. `None` for anything
/// else (RabbitMQ 3.10's channel crashes on it: 541).
pub fn stream_start(v: Option<&FieldValue>, now_ms: u64) -> Option<StreamStart> {
    let Some(v) = v else {
        return Some(StreamStart::Next);
    };
    match v {
        FieldValue::LongString(s) => match s.as_bytes() {
            b"first" => Some(StreamStart::First),
            b"last" => Some(StreamStart::Last),
            b"next" => Some(StreamStart::Next),
            other => max_age_ms(other).map(|ms| StreamStart::Since(now_ms.saturating_sub(ms))),
        },
        FieldValue::Timestamp(secs) => Some(StreamStart::Since(secs.saturating_mul(1000))),
        FieldValue::Bool(_) => None,
        other => other.as_integer().map(|n| match u64::try_from(n) {
            Ok(n) => StreamStart::Offset(n),
            Err(_) if n < 0 => StreamStart::First,
            Err(_) => StreamStart::Offset(u64::MAX),
        }),
    }
}

/// RabbitMQ's default stream segment size (500 MB).
pub const STREAM_SEGMENT_SIZE: u64 = 500_000_000;

/// `x-max-age` as ms: digits and a unit, `Y` (365 days), `M` (30 days),
/// `D`, `h`, `m` or `s`, more than zero; `None` when it is not one.
pub fn max_age_ms(s: &[u8]) -> Option<u64> {
    let (unit, digits) = s.split_last()?;
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let secs: u64 = match unit {
        b'Y' => 365 * 86_400,
        b'M' => 30 * 86_400,
        b'D' => 86_400,
        b'h' => 3_600,
        b'm' => 60,
        b's' => 1,
        _ => return None,
    };
    n.checked_mul(secs)?.checked_mul(1000).filter(|ms| *ms > 0)
}

fn int(v: Option<&FieldValue>) -> Option<i128> {
    v.and_then(FieldValue::as_integer)
}

fn short(v: Option<&FieldValue>) -> Option<ShortString> {
    match v {
        Some(FieldValue::LongString(s)) => ShortString::from_bytes(s.as_bytes()).ok(),
        _ => None,
    }
}

impl QueueArgs {
    /// Reads validated arguments (see the core's checks); unknown or
    /// ill-typed ones are ignored here.
    pub fn from_arguments(args: &FieldTable) -> QueueArgs {
        let u = |k: &str| int(args.get(k)).and_then(|v| u64::try_from(v).ok());
        let kind = QueueKind::from_arguments(args);
        QueueArgs {
            kind,
            message_ttl: u("x-message-ttl"),
            expires: u("x-expires"),
            dead_letter_exchange: short(args.get("x-dead-letter-exchange")),
            dead_letter_routing_key: short(args.get("x-dead-letter-routing-key")),
            max_length: u("x-max-length"),
            max_length_bytes: u("x-max-length-bytes"),
            overflow: match args.get("x-overflow") {
                Some(FieldValue::LongString(s)) if s.as_bytes() == b"reject-publish" => {
                    Overflow::RejectPublish
                }
                // Quorum queues in 3.10 log a warning and keep the default.
                Some(FieldValue::LongString(s))
                    if s.as_bytes() == b"reject-publish-dlx" && kind != QueueKind::Quorum =>
                {
                    Overflow::RejectPublishDlx
                }
                _ => Overflow::DropHead,
            },
            overflow_declared: args.contains_key("x-overflow"),
            max_priority: u("x-max-priority").map(|p| p.min(255) as u8),
            single_active: matches!(
                args.get("x-single-active-consumer"),
                Some(FieldValue::Bool(true))
            ),
            delivery_limit: u("x-delivery-limit").filter(|_| kind == QueueKind::Quorum),
            max_age_ms: match args.get("x-max-age") {
                Some(FieldValue::LongString(s)) => max_age_ms(s.as_bytes()),
                _ => None,
            },
            segment_size: u("x-stream-max-segment-size-bytes").unwrap_or(STREAM_SEGMENT_SIZE),
        }
    }
}

/// The properties of a quorum queue's delivery that was returned `count`
/// times before: the `x-delivery-count` header set (a signed 64-bit
/// integer) and the table sorted by key, as RabbitMQ 3.10's
/// `rabbit_basic:add_header` leaves it.
pub fn with_delivery_count(p: &BasicProperties, count: u32) -> BasicProperties {
    with_header(p, "x-delivery-count", i64::from(count))
}

/// The properties with header `key` set to a signed 64-bit integer and the
/// table sorted by key (`rabbit_basic:add_header`): `x-delivery-count`,
/// and a stream delivery's `x-stream-offset`.
pub fn with_header(p: &BasicProperties, key: &'static str, value: i64) -> BasicProperties {
    let mut out = p.clone();
    let mut headers = p.headers.clone().unwrap_or_default();
    headers.set(ShortString::from_static(key), FieldValue::I64(value));
    out.headers = Some(sorted(headers));
    out
}

/// The longest TTL RabbitMQ accepts (ten years, in ms).
pub const MAX_TTL: u64 = 315_360_000_000;

/// A message's `expiration` property as a TTL in ms: `Ok(None)` when absent,
/// RabbitMQ's error text when it is not an integer from 0 to [`MAX_TTL`]
/// (parsed as Erlang's `string:to_integer`: an optional sign and digits).
pub fn expiration_ms(p: &BasicProperties) -> Result<Option<u64>, String> {
    let Some(e) = &p.expiration else {
        return Ok(None);
    };
    let s = e.to_string_lossy();
    let prefix = format!("invalid expiration '{s}': ");
    let b = s.as_bytes();
    let sign = usize::from(matches!(b.first(), Some(b'+' | b'-')));
    let digits = b[sign..].iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return Err(format!("{prefix}no_integer"));
    }
    let end = sign + digits;
    if end < b.len() {
        let rest = String::from_utf8_lossy(&b[end..]);
        return Err(format!("{prefix}{{leftover_string,\"{rest}\"}}"));
    }
    let number = &s[sign..end];
    let number = number.trim_start_matches('0');
    let number = if number.is_empty() { "0" } else { number };
    let negative = b.first() == Some(&b'-') && number != "0";
    if negative {
        return Err(format!("{prefix}{{value_negative,-{number}}}"));
    }
    match number.parse::<u64>() {
        Ok(v) if v <= MAX_TTL => Ok(Some(v)),
        _ => {
            // io_lib's ~p: a term that would pass column 80 is broken after
            // the first element, the rest indented under it.
            let term = format!("{{value_too_large,{number}}}");
            let col = prefix.chars().count();
            if col + term.len() > 80 {
                Err(format!(
                    "{prefix}{{value_too_large,\n{}{number}}}",
                    " ".repeat(col + 1)
                ))
            } else {
                Err(format!("{prefix}{term}"))
            }
        }
    }
}

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// basic.reject / basic.nack with requeue=false.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// A length limit dropped it.
    Maxlen,
    /// A quorum queue's `x-delivery-limit` was passed.
    DeliveryLimit,
}

impl Reason {
    /// RabbitMQ's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::Maxlen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

fn ls(s: &[u8]) -> FieldValue {
    FieldValue::LongString(LongString::copy_from(s))
}

/// The routing keys a message was published with: its routing key, then
/// its `CC` header's strings (`BCC` is gone by then).
pub fn routing_keys(routing_key: &ShortString, p: &BasicProperties) -> Vec<ShortString> {
    let mut keys = vec![routing_key.clone()];
    if let Some(FieldValue::Array(a)) = p.headers.as_ref().and_then(|h| h.get("CC")) {
        for v in a.iter() {
            if let FieldValue::LongString(s) = v
                && let Ok(k) = ShortString::from_bytes(s.as_bytes())
            {
                keys.push(k);
            }
        }
    }
    keys
}

/// The properties a message is dead-lettered with from `queue` for
/// `reason` at `time` (seconds since the epoch): the `x-death` entry for
/// (queue, reason) counted up and moved first, or a new one first;
/// `x-first-death-*` set once; `expiration` removed (kept in the entry as
/// `original-expiration`); CC removed when a dead-letter routing key
/// replaces the routing keys.
pub fn dead_letter_properties(
    p: &BasicProperties,
    exchange: &ShortString,
    routing_key: &ShortString,
    queue: &ShortString,
    reason: Reason,
    time: u64,
    replaces_keys: bool,
) -> BasicProperties {
    let mut out = p.clone();
    let keys = routing_keys(routing_key, p);
    let mut headers = p.headers.clone().unwrap_or_default();
    let old: Vec<FieldValue> = match headers.remove("x-death") {
        Some(FieldValue::Array(a)) => a.into_inner(),
        _ => Vec::new(),
    };
    let first_death = old.is_empty();
    let same = |t: &FieldTable| {
        matches!(t.get("queue"), Some(FieldValue::LongString(q)) if q.as_bytes() == queue.as_bytes())
            && matches!(t.get("reason"), Some(FieldValue::LongString(r)) if r.as_bytes() == reason.as_str().as_bytes())
    };
    let mut rest = old;
    let found = rest
        .iter()
        .position(|d| matches!(d, FieldValue::Table(t) if same(t)));
    let entry = match found.map(|i| rest.remove(i)) {
        // The same queue and reason again: counted up; its first exchange,
        // routing keys and time stay.
        Some(FieldValue::Table(mut t)) => {
            let n = int(t.get("count")).unwrap_or(0) + 1;
            t.set(ShortString::from_static("count"), FieldValue::I64(n as i64));
            t
        }
        _ => {
            let mut t = FieldTable::new();
            t.insert("count", FieldValue::I64(1));
            t.insert("reason", ls(reason.as_str().as_bytes()));
            t.insert("queue", ls(queue.as_bytes()));
            t.insert("time", FieldValue::Timestamp(time));
            t.insert("exchange", ls(exchange.as_bytes()));
            let mut a = FieldArray::new();
            for k in &keys {
                a.push(ls(k.as_bytes()));
            }
            t.insert("routing-keys", FieldValue::Array(a));
            if let Some(e) = &p.expiration {
                t.insert("original-expiration", ls(e.as_bytes()));
            }
            t
        }
    };
    // RabbitMQ 3.10: on a message that died before, the updated entry goes
    // first with its keys sorted, followed by the others in reverse order.
    let entry = if first_death { entry } else { sorted(entry) };
    let mut a = FieldArray::new();
    a.push(FieldValue::Table(entry));
    for d in rest.into_iter().rev() {
        a.push(d);
    }
    headers.set(ShortString::from_static("x-death"), FieldValue::Array(a));
    if !headers.contains_key("x-first-death-reason") {
        headers.set(
            ShortString::from_static("x-first-death-exchange"),
            ls(exchange.as_bytes()),
        );
        headers.set(
            ShortString::from_static("x-first-death-queue"),
            ls(queue.as_bytes()),
        );
        headers.set(
            ShortString::from_static("x-first-death-reason"),
            ls(reason.as_str().as_bytes()),
        );
    }
    if replaces_keys {
        headers.remove("CC");
    }
    out.headers = Some(sorted(headers));
    out.expiration = None;
    out
}

/// The table sorted by key, as RabbitMQ 3.10 leaves a headers table it
/// rewrote.
fn sorted(t: FieldTable) -> FieldTable {
    let mut v = t.into_inner();
    v.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = FieldTable::with_capacity(v.len());
    for (k, val) in v {
        out.push(k, val);
    }
    out
}

/// Whether dead-lettering a message into `target` would go round a cycle
/// RabbitMQ drops: `target` is already in the message's `x-death` path and
/// no death on the way was a rejection (a consumer's decision breaks the
/// cycle).
pub fn is_cycle(p: &BasicProperties, target: &[u8]) -> bool {
    let Some(FieldValue::Array(deaths)) = p.headers.as_ref().and_then(|h| h.get("x-death")) else {
        return false;
    };
    for d in deaths.iter() {
        let FieldValue::Table(t) = d else { continue };
        if matches!(t.get("reason"), Some(FieldValue::LongString(r)) if r.as_bytes() == b"rejected")
        {
            return false;
        }
        if matches!(t.get("queue"), Some(FieldValue::LongString(q)) if q.as_bytes() == target) {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &'static str) -> ShortString {
        ShortString::from_static(x)
    }

    #[test]
    fn x_death_counts_per_queue_and_reason_and_moves_the_latest_first() {
        let p = BasicProperties {
            expiration: Some(s("100")),
            ..Default::default()
        };
        let once =
            dead_letter_properties(&p, &s("x"), &s("k"), &s("q1"), Reason::Expired, 10, false);
        assert_eq!(once.expiration, None);
        let h = once.headers.clone().unwrap();
        let keys: Vec<_> = h.keys().map(|k| k.to_string_lossy().into_owned()).collect();
        assert_eq!(
            keys,
            [
                "x-death",
                "x-first-death-exchange",
                "x-first-death-queue",
                "x-first-death-reason"
            ]
        );
        let twice = dead_letter_properties(
            &once,
            &s("x"),
            &s("k"),
            &s("q2"),
            Reason::Rejected,
            11,
            false,
        );
        let thrice = dead_letter_properties(
            &twice,
            &s("x"),
            &s("k"),
            &s("q1"),
            Reason::Expired,
            12,
            false,
        );
        let Some(FieldValue::Array(d)) = thrice.headers.as_ref().unwrap().get("x-death") else {
            panic!()
        };
        assert_eq!(d.len(), 2);
        let FieldValue::Table(first) = &d.as_slice()[0] else {
            panic!()
        };
        assert_eq!(first.get("count"), Some(&FieldValue::I64(2)));
        assert_eq!(
            first.get("time"),
            Some(&FieldValue::Timestamp(10)),
            "the first time stays"
        );
        assert!(
            matches!(first.get("original-expiration"), Some(FieldValue::LongString(e)) if e.as_bytes() == b"100")
        );
        assert!(
            matches!(thrice.headers.as_ref().unwrap().get("x-first-death-queue"), Some(FieldValue::LongString(q)) if q.as_bytes() == b"q1")
        );
    }

    #[test]
    fn cycles_are_broken_by_rejections_only() {
        let p = BasicProperties::default();
        let d = dead_letter_properties(&p, &s(""), &s("q"), &s("q"), Reason::Expired, 0, false);
        assert!(is_cycle(&d, b"q"));
        assert!(!is_cycle(&d, b"other"));
        let r = dead_letter_properties(&p, &s(""), &s("q"), &s("q"), Reason::Rejected, 0, false);
        assert!(!is_cycle(&r, b"q"));
    }

    #[test]
    fn expiration_must_be_a_non_negative_integer() {
        let p = |e: &'static str| BasicProperties {
            expiration: Some(s(e)),
            ..Default::default()
        };
        assert_eq!(expiration_ms(&p("0")), Ok(Some(0)));
        assert_eq!(expiration_ms(&BasicProperties::default()), Ok(None));
        assert!(expiration_ms(&p("-1")).is_err());
        assert!(expiration_ms(&p("abc")).is_err());
    }
}
