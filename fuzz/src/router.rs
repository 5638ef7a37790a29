//! The `router_ops` check: an arbitrary sequence of declare / delete /
//! bind / unbind / publish operations applied to `amqp-router` and to a
//! deliberately naive linear-scan model (shared with the router's
//! differential proptest); every result and the topology after every
//! operation must agree, and nothing may panic.

#[path = "../../amqp-router/tests/naive/mod.rs"]
mod naive;

use amqp_types::{FieldTable, FieldValue, ShortString};
use arbitrary::{Result, Unstructured};
use naive::{EXCHANGES, Op, QUEUES, TYPES, WORDS};

fn pick(u: &mut Unstructured<'_>, pool: &[&str]) -> Result<String> {
    Ok((*u.choose(pool)?).to_owned())
}

fn value(u: &mut Unstructured<'_>) -> Result<FieldValue> {
    Ok(match u.int_in_range(0..=12u8)? {
        0 => FieldValue::I8(u.int_in_range(-1..=2)?),
        1 => FieldValue::U16(u.int_in_range(0..=2)?),
        2 => FieldValue::I32(u.int_in_range(-1..=2)?),
        3 => FieldValue::I64(u.int_in_range(-1..=2)?),
        4 => FieldValue::F64(
            f64::from(u.int_in_range(-1..=2i8)?) * if u.arbitrary()? { 1.0 } else { 0.5 },
        ),
        5 => FieldValue::F32(f32::from(u.int_in_range(-1..=2i8)?)),
        6 => FieldValue::LongString(pick(u, &["1", "", "a"])?.into()),
        7 => FieldValue::ByteArray(pick(u, &["1", "a"])?.into_bytes().into()),
        8 => FieldValue::Bool(u.arbitrary()?),
        9 => FieldValue::Void,
        10 => FieldValue::Timestamp(u.int_in_range(0..=2)?),
        11 => FieldValue::Decimal(u.arbitrary()?),
        _ => u.arbitrary()?,
    })
}

fn table(u: &mut Unstructured<'_>, keys: &[&str]) -> Result<FieldTable> {
    let mut t = FieldTable::new();
    for _ in 0..u.int_in_range(0..=3u8)? {
        let k = pick(u, keys)?;
        let v = value(u)?;
        if !t.contains_key(&k) {
            t.push(ShortString::try_from(k.as_str()).unwrap_or_default(), v);
        }
    }
    Ok(t)
}

fn key(u: &mut Unstructured<'_>) -> Result<String> {
    if u.ratio(1, 5)? {
        return pick(u, QUEUES);
    }
    let n = u.int_in_range(0..=4u8)?;
    let mut words = Vec::new();
    for _ in 0..n {
        words.push(pick(u, WORDS)?);
    }
    Ok(words.join("."))
}

fn binding_args(u: &mut Unstructured<'_>) -> Result<FieldTable> {
    if u.ratio(2, 3)? {
        return Ok(FieldTable::new());
    }
    let mut t = table(u, &["a", "b", "x-c"])?;
    match u.int_in_range(0..=6u8)? {
        0 => {}
        1 => t.insert("x-match", "all"),
        2 => t.insert("x-match", "any"),
        3 => t.insert("x-match", "all-with-x"),
        4 => t.insert("x-match", "any-with-x"),
        5 => t.insert("x-match", "nope"),
        _ => t.insert("x-match", value(u)?),
    }
    Ok(t)
}

fn headers(u: &mut Unstructured<'_>) -> Result<Option<FieldTable>> {
    if u.ratio(1, 4)? {
        return Ok(None);
    }
    let mut t = table(u, &["a", "b", "x-c"])?;
    if u.ratio(1, 4)? {
        let k = if u.arbitrary()? { "CC" } else { "BCC" };
        let v = if u.ratio(4, 5)? {
            let mut items = Vec::new();
            for _ in 0..u.int_in_range(0..=2u8)? {
                items.push(if u.ratio(3, 4)? {
                    FieldValue::LongString(key(u)?.into())
                } else {
                    value(u)?
                });
            }
            FieldValue::Array(items.into())
        } else {
            value(u)?
        };
        t.insert(k, v);
    }
    Ok(Some(t))
}

fn op(u: &mut Unstructured<'_>) -> Result<Op> {
    Ok(match u.int_in_range(0..=20u8)? {
        0..=2 => Op::DeclareExchange {
            name: pick(u, EXCHANGES)?,
            kind: pick(u, TYPES)?,
            auto_delete: u.ratio(1, 3)?,
            internal: u.ratio(1, 6)?,
            ae: if u.ratio(1, 3)? {
                Some(pick(u, EXCHANGES)?)
            } else {
                None
            },
        },
        3 => Op::DeleteExchange {
            name: pick(u, EXCHANGES)?,
            if_unused: u.arbitrary()?,
        },
        4 | 5 => Op::DeclareQueue {
            name: pick(u, QUEUES)?,
        },
        6 => Op::DeleteQueue {
            name: pick(u, QUEUES)?,
        },
        7..=14 => {
            let to_queue = u.arbitrary()?;
            let source = pick(u, EXCHANGES)?;
            let dest = pick(u, if to_queue { QUEUES } else { EXCHANGES })?;
            let key = key(u)?;
            let args = binding_args(u)?;
            if u.ratio(1, 4)? {
                Op::Unbind {
                    source,
                    dest,
                    to_queue,
                    key,
                    args,
                }
            } else {
                Op::Bind {
                    source,
                    dest,
                    to_queue,
                    key,
                    args,
                }
            }
        }
        _ => Op::Route {
            exchange: pick(u, EXCHANGES)?,
            key: key(u)?,
            headers: headers(u)?,
        },
    })
}

/// Decodes operations from `data` and checks them (panics on a difference).
pub fn router_ops(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let mut ops = Vec::new();
    while !u.is_empty() && ops.len() < 256 {
        match op(&mut u) {
            Ok(o) => ops.push(o),
            Err(_) => break,
        }
    }
    naive::check(&ops);
}
