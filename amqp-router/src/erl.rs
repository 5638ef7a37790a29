//! RabbitMQ's reply texts: Erlang-style formatting of names and values.

use amqp_types::{FieldTable, FieldValue};
use std::fmt::Write;

/// The Erlang type atom RabbitMQ uses for a field value's type.
pub(crate) fn type_name(v: &FieldValue) -> &'static str {
    match v.letter() {
        b't' => "bool",
        b'b' => "byte",
        b'B' => "unsignedbyte",
        b's' => "short",
        b'u' => "unsignedshort",
        b'I' => "signedint",
        b'i' => "unsignedint",
        b'l' => "long",
        b'f' => "float",
        b'd' => "double",
        b'D' => "decimal",
        b'S' => "longstr",
        b'A' => "array",
        b'T' => "timestamp",
        b'F' => "table",
        b'V' => "void",
        b'x' => "binary",
        _ => "unknown",
    }
}

/// `~s` of a binary: the bytes as text.
pub(crate) fn s(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `~tp` of a binary: `<<"text">>`, `<<"é"/utf8>>` or `<<1,2>>`.
pub(crate) fn binary(bytes: &[u8], out: &mut String) {
    if bytes.is_empty() {
        out.push_str("<<>>");
        return;
    }
    let printable = |c: char| !c.is_control() || matches!(c, '\n' | '\t' | '\r');
    match std::str::from_utf8(bytes) {
        Ok(text) if text.chars().all(printable) => {
            out.push_str("<<\"");
            for c in text.chars() {
                match c {
                    '"' => out.push_str("\\\""),
                    '\\' => out.push_str("\\\\"),
                    '\n' => out.push_str("\\n"),
                    '\t' => out.push_str("\\t"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
            out.push('"');
            if !text.is_ascii() {
                out.push_str("/utf8");
            }
            out.push_str(">>");
        }
        _ => {
            out.push_str("<<");
            for (i, b) in bytes.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{b}");
            }
            out.push_str(">>");
        }
    }
}

fn float(f: f64, out: &mut String) {
    if f.is_finite() && f == f.trunc() && f.abs() < 1e16 {
        let _ = write!(out, "{f:.1}");
    } else {
        let _ = write!(out, "{f:?}");
    }
}

/// `~p` of a field value as RabbitMQ holds it (the value part of
/// `{Type, Value}`). Iterative over nesting.
pub(crate) fn value(v: &FieldValue, out: &mut String) {
    enum Item<'a> {
        V(&'a FieldValue),
        Typed(&'a FieldValue),
        Entry(&'a [u8], &'a FieldValue),
        Text(&'static str),
    }
    let mut stack = vec![Item::V(v)];
    while let Some(item) = stack.pop() {
        let v = match item {
            Item::Text(t) => {
                out.push_str(t);
                continue;
            }
            Item::Typed(v) => {
                let _ = write!(out, "{{{},", type_name(v));
                stack.push(Item::Text("}"));
                stack.push(Item::V(v));
                continue;
            }
            Item::Entry(k, v) => {
                out.push('{');
                binary(k, out);
                let _ = write!(out, ",{},", type_name(v));
                stack.push(Item::Text("}"));
                stack.push(Item::V(v));
                continue;
            }
            Item::V(v) => v,
        };
        match v {
            FieldValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            FieldValue::F32(f) => float(f64::from(*f), out),
            FieldValue::F64(f) => float(*f, out),
            FieldValue::Decimal(d) => {
                let _ = write!(out, "{{{},{}}}", d.scale, d.value);
            }
            FieldValue::LongString(s) | FieldValue::ByteArray(s) => binary(s.as_bytes(), out),
            FieldValue::Void => out.push_str("undefined"),
            FieldValue::Array(a) => {
                out.push('[');
                stack.push(Item::Text("]"));
                for (i, e) in a.iter().enumerate().rev() {
                    stack.push(Item::Typed(e));
                    if i > 0 {
                        stack.push(Item::Text(","));
                    }
                }
            }
            FieldValue::Table(t) => {
                out.push('[');
                stack.push(Item::Text("]"));
                push_table(t, &mut stack);
            }
            other => match other.as_integer() {
                Some(i) => {
                    let _ = write!(out, "{i}");
                }
                None => out.push('?'),
            },
        }
    }

    fn push_table<'a>(t: &'a FieldTable, stack: &mut Vec<Item<'a>>) {
        for (i, (k, v)) in t.iter().enumerate().rev() {
            stack.push(Item::Entry(k.as_bytes(), v));
            if i > 0 {
                stack.push(Item::Text(","));
            }
        }
    }
}

/// `~p`/`~s` of a value in an equivalence message: binaries bare, others
/// as terms.
pub(crate) fn bare(v: &FieldValue) -> String {
    match v {
        FieldValue::LongString(s) | FieldValue::ByteArray(s) => self::s(s.as_bytes()),
        other => {
            let mut out = String::new();
            value(other, &mut out);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_erlang() {
        let mut o = String::new();
        binary(b"some", &mut o);
        assert_eq!(o, "<<\"some\">>");
        o.clear();
        binary(b"", &mut o);
        assert_eq!(o, "<<>>");
        o.clear();
        binary(&[1, 2], &mut o);
        assert_eq!(o, "<<1,2>>");
        assert_eq!(bare(&FieldValue::I32(10)), "10");
        assert_eq!(bare(&FieldValue::Void), "undefined");
        assert_eq!(bare(&FieldValue::F64(1.0)), "1.0");
        let mut t = FieldTable::new();
        t.insert("a", 1i32);
        assert_eq!(bare(&FieldValue::Table(t)), "[{<<\"a\">>,signedint,1}]");
    }
}
