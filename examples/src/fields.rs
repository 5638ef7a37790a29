//! Field values on the command line and on the screen: `key:T=value`
//! parsing with RabbitMQ's type letters, and rendering that names each
//! value's AMQP type (`"1" (long string)` versus `1 (signed 32-bit)`).

use crate::dump::{quote, scalar};
use amqp_types::{Decimal, FieldTable, FieldValue, ShortString};

/// The type letters [`parse_value`] accepts, for error messages and help.
pub const TYPE_LETTERS_HELP: &str = "\
S long string (default), t boolean, b/B signed/unsigned 8-bit, s/u 16-bit,
I/i signed/unsigned 32-bit, l signed 64-bit, T timestamp, f/d 32/64-bit float,
D decimal (1.25), x byte array (hex), V void (key:V, no value)";

/// The human name of a value's AMQP type (`"signed 32-bit"`).
pub fn type_name(v: &FieldValue) -> &'static str {
    match v.letter() {
        b't' => "boolean",
        b'b' => "signed 8-bit",
        b'B' => "unsigned 8-bit",
        b's' => "signed 16-bit",
        b'u' => "unsigned 16-bit",
        b'I' => "signed 32-bit",
        b'i' => "unsigned 32-bit",
        b'l' => "signed 64-bit",
        b'f' => "32-bit float",
        b'd' => "64-bit float",
        b'D' => "decimal",
        b'S' => "long string",
        b'A' => "array",
        b'T' => "timestamp",
        b'F' => "table",
        b'V' => "void",
        b'x' => "byte array",
        _ => "unknown type",
    }
}

/// Writes `v` followed by its type in parentheses: `"1" (long string)`,
/// `1 (signed 32-bit)`, `[2 (signed 64-bit)] (array)`. Containers show
/// every element typed the same way.
pub fn typed(v: &FieldValue, out: &mut String) {
    match v {
        FieldValue::Table(t) => {
            typed_table(t, out);
            out.push_str(" (table)");
        }
        FieldValue::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                typed(item, out);
            }
            out.push_str("] (array)");
        }
        FieldValue::ByteArray(b) => {
            quote(b.as_bytes(), usize::MAX, out);
            out.push_str(" (byte array)");
        }
        other => {
            scalar(other, out);
            out.push_str(" (");
            out.push_str(type_name(other));
            out.push(')');
        }
    }
}

/// `typed` as a new string.
pub fn typed_string(v: &FieldValue) -> String {
    let mut s = String::new();
    typed(v, &mut s);
    s
}

/// Writes a table as `{key: value (type), ...}`.
pub fn typed_table(t: &FieldTable, out: &mut String) {
    out.push('{');
    for (i, (k, v)) in t.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&k.to_string_lossy());
        out.push_str(": ");
        typed(v, out);
    }
    out.push('}');
}

/// Parses `text` as a value of the type `letter` names (see
/// [`TYPE_LETTERS_HELP`]).
pub fn parse_value(letter: &str, text: &str) -> Result<FieldValue, String> {
    fn num<T: std::str::FromStr>(text: &str, what: &str) -> Result<T, String> {
        text.parse()
            .map_err(|_| format!("{text:?} is not a valid {what}"))
    }
    Ok(match letter {
        "S" => FieldValue::LongString(text.into()),
        "t" => FieldValue::Bool(num(text, "boolean (true/false)")?),
        "b" => FieldValue::I8(num(text, "signed 8-bit integer")?),
        "B" => FieldValue::U8(num(text, "unsigned 8-bit integer")?),
        "s" => FieldValue::I16(num(text, "signed 16-bit integer")?),
        "u" => FieldValue::U16(num(text, "unsigned 16-bit integer")?),
        "I" => FieldValue::I32(num(text, "signed 32-bit integer")?),
        "i" => FieldValue::U32(num(text, "unsigned 32-bit integer")?),
        "l" => FieldValue::I64(num(text, "signed 64-bit integer")?),
        "T" => FieldValue::Timestamp(num(text, "timestamp (seconds)")?),
        "f" => FieldValue::F32(num(text, "32-bit float")?),
        "d" => FieldValue::F64(num(text, "64-bit float")?),
        "D" => {
            let (int, frac) = text.split_once('.').unwrap_or((text, ""));
            let digits = format!("{int}{frac}");
            FieldValue::Decimal(Decimal {
                scale: u8::try_from(frac.len())
                    .map_err(|_| format!("{text:?} has too many decimals"))?,
                value: num(&digits, "decimal (unsigned, e.g. 1.25)")?,
            })
        }
        "x" => {
            if !text.len().is_multiple_of(2) || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{text:?} is not a hex byte string"));
            }
            let bytes: Vec<u8> = (0..text.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap_or(0))
                .collect();
            FieldValue::ByteArray(bytes.into())
        }
        "V" if text.is_empty() => FieldValue::Void,
        "V" => return Err("a void value (V) takes no value".into()),
        other => {
            return Err(format!(
                "unknown type letter {other:?} (use one of S t b B s u I i l T f d D x V)"
            ));
        }
    })
}

/// Parses `key=value` (a long string), `key:T=value` (typed by the letter
/// `T`) or `key:V` (void).
pub fn parse_header(spec: &str) -> Result<(ShortString, FieldValue), String> {
    let (lhs, value) = match spec.split_once('=') {
        Some((l, v)) => (l, v),
        None if spec.ends_with(":V") => (spec, ""),
        None => {
            return Err(format!(
                "bad header {spec:?}: expected key=value or key:T=value"
            ));
        }
    };
    let (key, letter) = match lhs.rsplit_once(':') {
        Some((k, t)) if t.len() == 1 => (k, t),
        _ => (lhs, "S"),
    };
    if key.is_empty() {
        return Err(format!("bad header {spec:?}: empty key"));
    }
    let key = ShortString::try_from(key)
        .map_err(|_| format!("bad header {spec:?}: key longer than 255 bytes"))?;
    let value = parse_value(letter, value).map_err(|e| format!("bad header {spec:?}: {e}"))?;
    Ok((key, value))
}

/// The `-H` spelling of `value` under `key` (`key:I=1`), when the value is
/// a scalar the command line can express; `None` for containers.
pub fn header_spec(key: &str, v: &FieldValue) -> Option<String> {
    let text = match v {
        FieldValue::LongString(s) => return Some(format!("{key}={}", s.to_string_lossy())),
        FieldValue::Void => return Some(format!("{key}:V")),
        FieldValue::Table(_) | FieldValue::Array(_) => return None,
        FieldValue::ByteArray(b) => b.as_bytes().iter().map(|x| format!("{x:02x}")).collect(),
        FieldValue::Decimal(d) => decimal_text(*d),
        other => {
            let mut s = String::new();
            scalar(other, &mut s);
            s
        }
    };
    Some(format!("{key}:{}={text}", v.letter() as char))
}

/// A decimal as `1.25` (`value` with the point `scale` digits from the
/// right).
pub fn decimal_text(d: Decimal) -> String {
    let digits = format!("{:0>width$}", d.value, width = usize::from(d.scale) + 1);
    let (int, frac) = digits.split_at(digits.len() - usize::from(d.scale));
    if frac.is_empty() {
        int.to_owned()
    } else {
        format!("{int}.{frac}")
    }
}

/// A value as JSON that keeps its AMQP type: `{"type": "signed 32-bit",
/// "value": 1}`. Strings that are not UTF-8 and byte arrays carry their
/// bytes as `"hex"` instead of `"value"`; tables are objects and arrays are
/// lists of such typed values; non-finite floats are `null`.
pub fn to_json(v: &FieldValue) -> serde_json::Value {
    use serde_json::{Value, json};
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let value = match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::I8(x) => json!(x),
        FieldValue::U8(x) => json!(x),
        FieldValue::I16(x) => json!(x),
        FieldValue::U16(x) => json!(x),
        FieldValue::I32(x) => json!(x),
        FieldValue::U32(x) => json!(x),
        FieldValue::I64(x) => json!(x),
        FieldValue::Timestamp(x) => json!(x),
        FieldValue::F32(x) => json!(x),
        FieldValue::F64(x) => json!(x),
        FieldValue::Decimal(d) => json!(decimal_text(*d)),
        FieldValue::Void => Value::Null,
        FieldValue::LongString(s) => match std::str::from_utf8(s.as_bytes()) {
            Ok(text) => json!(text),
            Err(_) => return json!({"type": type_name(v), "hex": hex(s.as_bytes())}),
        },
        FieldValue::ByteArray(b) => return json!({"type": type_name(v), "hex": hex(b.as_bytes())}),
        FieldValue::Table(t) => table_to_json(t),
        FieldValue::Array(a) => Value::Array(a.iter().map(to_json).collect()),
        _ => Value::Null,
    };
    json!({"type": type_name(v), "value": value})
}

/// A table as a JSON object of [`to_json`] values (a repeated key keeps
/// its first value).
pub fn table_to_json(t: &FieldTable) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, v) in t {
        map.entry(k.to_string_lossy().into_owned())
            .or_insert_with(|| to_json(v));
    }
    serde_json::Value::Object(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_names_the_type() {
        assert_eq!(
            typed_string(&FieldValue::LongString("1".into())),
            "\"1\" (long string)"
        );
        assert_eq!(typed_string(&FieldValue::I32(1)), "1 (signed 32-bit)");
        let a: amqp_types::FieldArray = vec![FieldValue::I64(2)].into();
        assert_eq!(
            typed_string(&FieldValue::Array(a)),
            "[2 (signed 64-bit)] (array)"
        );
    }

    #[test]
    fn json_keeps_types() {
        let mut t = FieldTable::new();
        t.insert("n", 1i32);
        t.insert("s", "1");
        assert_eq!(
            table_to_json(&t).to_string(),
            r#"{"n":{"type":"signed 32-bit","value":1},"s":{"type":"long string","value":"1"}}"#
        );
    }

    #[test]
    fn header_specs_round_trip() {
        for spec in [
            "k=v", "k:I=-3", "k:t=true", "k:D=1.25", "k:D=0.05", "k:x=00ff", "k:V",
        ] {
            let (key, v) = parse_header(spec).unwrap();
            assert_eq!(
                header_spec(&key.to_string_lossy(), &v).as_deref(),
                Some(spec)
            );
        }
        assert!(parse_header("k:I=x").is_err());
        assert!(parse_header("novalue").is_err());
    }
}
