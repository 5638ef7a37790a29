//! The headers exchange: `x-match` and RabbitMQ's value comparison.

use amqp_types::{FieldTable, FieldValue, ShortString};

/// How a headers binding combines its keys (the binding's `x-match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum XMatch {
    /// `all` (also the default): every non-`x-` key must match.
    All,
    /// `any`: at least one non-`x-` key must match.
    Any,
    /// `all-with-x`: every key, `x-` keys included, must match.
    AllWithX,
    /// `any-with-x`: at least one key, `x-` keys included, must match.
    AnyWithX,
}

impl XMatch {
    /// The kind a binding's arguments select, as RabbitMQ reads them at
    /// routing time (anything but a valid long string means `all`).
    pub fn of(arguments: &FieldTable) -> XMatch {
        match arguments.get("x-match") {
            Some(FieldValue::LongString(s)) => match s.as_bytes() {
                b"any" => XMatch::Any,
                b"all-with-x" => XMatch::AllWithX,
                b"any-with-x" => XMatch::AnyWithX,
                _ => XMatch::All,
            },
            _ => XMatch::All,
        }
    }

    fn is_all(self) -> bool {
        matches!(self, XMatch::All | XMatch::AllWithX)
    }

    fn with_x(self) -> bool {
        matches!(self, XMatch::AllWithX | XMatch::AnyWithX)
    }
}

/// Checks `x-match` as RabbitMQ does when binding to a headers exchange;
/// the error is the reply text (406).
pub(crate) fn validate_binding(arguments: &FieldTable) -> Result<(), String> {
    match arguments.get("x-match") {
        None => Ok(()),
        Some(FieldValue::LongString(s)) => match s.as_bytes() {
            b"all" | b"any" | b"all-with-x" | b"any-with-x" => Ok(()),
            other => {
                let mut v = String::new();
                crate::erl::binary(other, &mut v);
                Err(format!(
                    "Invalid x-match field value {v}; expected all, any, all-with-x, or any-with-x"
                ))
            }
        },
        Some(other) => {
            let mut v = String::new();
            crate::erl::value(other, &mut v);
            Err(format!(
                "Invalid x-match field type {} (value {v}); expected longstr",
                crate::erl::type_name(other)
            ))
        }
    }
}

/// Sorts table entries stably by key, as `rabbit_misc:sort_field_table`.
pub(crate) fn sort_table(t: &FieldTable) -> FieldTable {
    let mut entries: Vec<(ShortString, FieldValue)> = t.iter().cloned().collect();
    entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    entries.into_iter().collect()
}

/// Integer/float equality as Erlang's `==`: exact.
fn int_eq_float(i: i128, f: f64) -> bool {
    if !f.is_finite() || f.trunc() != f || f.abs() >= 1.7e38 {
        return false;
    }
    (f as i128) == i && (i as f64) == f
}

fn as_float(v: &FieldValue) -> Option<f64> {
    match *v {
        FieldValue::F32(f) => Some(f64::from(f)),
        FieldValue::F64(f) => Some(f),
        _ => None,
    }
}

/// Top-level comparison of a binding value with a message value, as
/// Erlang's `==` on the values without their types: integers of every
/// width and timestamps equal each other and floats of the same value, `S`
/// equals `x` with the same bytes, an empty array equals an empty table;
/// inside arrays and tables types and order count ([`nested_eq`]).
pub fn value_eq(a: &FieldValue, b: &FieldValue) -> bool {
    use FieldValue as V;
    if let (Some(x), Some(y)) = (a.as_integer(), b.as_integer()) {
        return x == y;
    }
    match (a, b) {
        (V::F32(_) | V::F64(_), V::F32(_) | V::F64(_)) => as_float(a) == as_float(b),
        (V::F32(_) | V::F64(_), _) => b
            .as_integer()
            .is_some_and(|i| int_eq_float(i, as_float(a).unwrap_or(f64::NAN))),
        (_, V::F32(_) | V::F64(_)) => a
            .as_integer()
            .is_some_and(|i| int_eq_float(i, as_float(b).unwrap_or(f64::NAN))),
        (V::LongString(x) | V::ByteArray(x), V::LongString(y) | V::ByteArray(y)) => x == y,
        (V::Bool(x), V::Bool(y)) => x == y,
        (V::Decimal(x), V::Decimal(y)) => x == y,
        (V::Void, V::Void) => true,
        (V::Array(x), V::Array(y)) => nested_seq_eq(
            x.as_slice().iter().map(|v| (None, v)),
            y.as_slice().iter().map(|v| (None, v)),
            x.len(),
            y.len(),
        ),
        (V::Table(x), V::Table(y)) => nested_seq_eq(
            x.iter().map(|(k, v)| (Some(k), v)),
            y.iter().map(|(k, v)| (Some(k), v)),
            x.len(),
            y.len(),
        ),
        (V::Array(x), V::Table(y)) => x.is_empty() && y.is_empty(),
        (V::Table(x), V::Array(y)) => x.is_empty() && y.is_empty(),
        _ => false,
    }
}

fn nested_seq_eq<'a>(
    x: impl Iterator<Item = (Option<&'a ShortString>, &'a FieldValue)>,
    y: impl Iterator<Item = (Option<&'a ShortString>, &'a FieldValue)>,
    lx: usize,
    ly: usize,
) -> bool {
    lx == ly
        && x.zip(y)
            .all(|((ka, a), (kb, b))| ka == kb && nested_eq(a, b))
}

/// Equality of typed values inside arrays and nested tables (`{Type,
/// Value}` terms under `==`): same type letter, same value (floats by value,
/// so `0.0 == -0.0`), tables in the same key order. Iterative.
pub fn nested_eq(a: &FieldValue, b: &FieldValue) -> bool {
    use FieldValue as V;
    let mut stack: Vec<(&FieldValue, &FieldValue)> = vec![(a, b)];
    while let Some((a, b)) = stack.pop() {
        if a.letter() != b.letter() {
            return false;
        }
        let ok = match (a, b) {
            (V::F32(x), V::F32(y)) => x == y,
            (V::F64(x), V::F64(y)) => x == y,
            (V::Array(x), V::Array(y)) => {
                if x.len() != y.len() {
                    return false;
                }
                stack.extend(x.iter().zip(y.iter()));
                true
            }
            (V::Table(x), V::Table(y)) => {
                if x.len() != y.len() {
                    return false;
                }
                for ((ka, va), (kb, vb)) in x.iter().zip(y.iter()) {
                    if ka != kb {
                        return false;
                    }
                    stack.push((va, vb));
                }
                true
            }
            _ => a == b,
        };
        if !ok {
            return false;
        }
    }
    true
}

/// RabbitMQ's merge walk over a binding's arguments (sorted by key) and a
/// message's headers (sorted by key): `rabbit_exchange_type_headers`'s
/// `headers_match/5`, clause for clause.
pub(crate) fn matches<'a>(
    pattern: &'a [(ShortString, FieldValue)],
    kind: XMatch,
    data: impl Iterator<Item = &'a (ShortString, FieldValue)>,
) -> bool {
    let mut data = data.peekable();
    let mut all = true;
    let mut any = false;
    let mut p = pattern.iter().peekable();
    loop {
        if kind.is_all() && !all {
            return false;
        }
        if !kind.is_all() && any {
            return true;
        }
        let Some(&(pk, pv)) = p.peek().map(|e| (&e.0, &e.1)).as_ref() else {
            return if kind.is_all() { all } else { any };
        };
        let pkb = pk.as_bytes();
        if pkb == b"x-match" || (!kind.with_x() && pkb.starts_with(b"x-")) {
            p.next();
            continue;
        }
        let Some(&(dk, dv)) = data.peek() else {
            // No more data, but still bindings: false with all.
            return if kind.is_all() { false } else { any };
        };
        let dkb = dk.as_bytes();
        if pkb > dkb {
            data.next();
            continue;
        }
        if pkb < dkb {
            all = false;
            p.next();
            continue;
        }
        if matches!(pv, FieldValue::Void) || value_eq(pv, dv) {
            any = true;
        } else {
            all = false;
        }
        p.next();
        data.next();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use amqp_types::FieldArray;

    #[test]
    fn top_level_by_value() {
        assert!(value_eq(&FieldValue::I8(1), &FieldValue::F64(1.0)));
        assert!(value_eq(&FieldValue::Timestamp(1), &FieldValue::U8(1)));
        assert!(!value_eq(
            &FieldValue::I64((1 << 53) + 1),
            &FieldValue::F64((1u64 << 53) as f64)
        ));
        assert!(value_eq(&FieldValue::F64(0.0), &FieldValue::F64(-0.0)));
        assert!(!value_eq(&FieldValue::Bool(true), &FieldValue::I8(1)));
        assert!(value_eq(
            &FieldValue::Array(FieldArray::new()),
            &FieldValue::Table(FieldTable::new())
        ));
        let a: FieldArray = vec![FieldValue::I32(1)].into();
        let b: FieldArray = vec![FieldValue::I64(1)].into();
        assert!(!value_eq(
            &FieldValue::Array(a.clone()),
            &FieldValue::Array(b)
        ));
        assert!(value_eq(
            &FieldValue::Array(a.clone()),
            &FieldValue::Array(a)
        ));
    }

    #[test]
    fn walk() {
        let mut b = FieldTable::new();
        b.insert("x-match", "any");
        b.insert("a", 1i32);
        let b = sort_table(&b);
        let mut h = FieldTable::new();
        h.insert("a", 1i64);
        let h = sort_table(&h);
        assert!(matches(b.as_slice(), XMatch::Any, h.iter()));
        assert!(!matches(b.as_slice(), XMatch::Any, [].iter()));
        assert!(matches(&[], XMatch::All, [].iter()));
    }
}
