//! The scenario language: tokenizing a step line, field values, and
//! building / rendering any method and the basic properties by their spec
//! field names (generated from the protocol table, so every method works).

use amqp_types::method::*;
use amqp_types::{BasicProperties, FieldArray, FieldTable, FieldValue, LongString, Method};
use amqp_types::{ShortString, for_each_basic_property, for_each_method};

/// The `key=value` (or bare `key`, meaning `key=true`) arguments of a step,
/// in the order written.
#[derive(Debug, Default, Clone)]
pub struct Args(pub Vec<(String, String)>);

impl Args {
    /// Removes and returns the first argument named `key`.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    /// Removes every `prefix.NAME=VALUE` argument, in order.
    pub fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let mut out = vec![];
        self.0.retain(|(k, v)| match k.strip_prefix(prefix) {
            Some(rest) if rest.starts_with('.') => {
                out.push((rest[1..].to_string(), v.clone()));
                false
            }
            _ => true,
        });
        out
    }

    /// Fails if anything is left (a typo in a scenario).
    pub fn finish(&self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!("unknown arguments {:?}", self.0))
        }
    }
}

/// Splits a line into tokens: whitespace separates, `"..."` quotes (with
/// `\"`, `\\`, `\n`, `\t`), `#` at the start of a token starts a comment.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut out = vec![];
    let mut cur = String::new();
    let mut in_token = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '#' if !in_token => break,
            c if c.is_whitespace() => {
                if in_token {
                    out.push(std::mem::take(&mut cur));
                    in_token = false;
                }
            }
            '"' => {
                in_token = true;
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated quote in {line:?}")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => cur.push('\n'),
                            Some('t') => cur.push('\t'),
                            Some(c) => cur.push(c),
                            None => return Err(format!("dangling escape in {line:?}")),
                        },
                        Some(c) => cur.push(c),
                    }
                }
            }
            c => {
                in_token = true;
                cur.push(c);
            }
        }
    }
    if in_token {
        out.push(cur);
    }
    Ok(out)
}

/// Parses `key=value` / `key` tokens.
pub fn parse_args(tokens: &[String]) -> Args {
    Args(
        tokens
            .iter()
            .map(|t| match t.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (t.clone(), "true".to_string()),
            })
            .collect(),
    )
}

/// A field value from text: `TYPE:VALUE` with the AMQP type letters (`S`
/// long string, `I` signed 32, `i` unsigned 32, `l` signed 64, `b`/`B`
/// 8-bit, `s`/`u` 16-bit, `t` boolean, `T` timestamp, `d` double, `V`
/// void, `A` array of comma-separated values each typed the same way,
/// e.g. `A:S:a,S:b`); untyped text is a long string.
pub fn parse_field_value(s: &str) -> Result<FieldValue, String> {
    let bad = |e: &dyn std::fmt::Display| format!("bad field value {s:?}: {e}");
    if s == "V" {
        return Ok(FieldValue::Void);
    }
    let Some((ty, v)) = s.split_once(':').filter(|(t, _)| t.len() == 1) else {
        return Ok(FieldValue::LongString(LongString::from(s)));
    };
    Ok(match ty {
        "S" => FieldValue::LongString(LongString::from(v)),
        "x" => FieldValue::ByteArray(LongString::from(v)),
        "I" => FieldValue::I32(v.parse().map_err(|e| bad(&e))?),
        "i" => FieldValue::U32(v.parse().map_err(|e| bad(&e))?),
        "l" => FieldValue::I64(v.parse().map_err(|e| bad(&e))?),
        "b" => FieldValue::I8(v.parse().map_err(|e| bad(&e))?),
        "B" => FieldValue::U8(v.parse().map_err(|e| bad(&e))?),
        "s" => FieldValue::I16(v.parse().map_err(|e| bad(&e))?),
        "u" => FieldValue::U16(v.parse().map_err(|e| bad(&e))?),
        "t" => FieldValue::Bool(parse_bool(v)?),
        "T" => FieldValue::Timestamp(v.parse().map_err(|e| bad(&e))?),
        "d" => FieldValue::F64(v.parse().map_err(|e| bad(&e))?),
        "A" => {
            let mut a = FieldArray::default();
            if !v.is_empty() {
                for item in v.split(',') {
                    a.push(parse_field_value(item)?);
                }
            }
            FieldValue::Array(a)
        }
        _ => FieldValue::LongString(LongString::from(s)),
    })
}

fn parse_bool(v: &str) -> Result<bool, String> {
    match v {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(format!("not a boolean: {v:?}")),
    }
}

/// A table from `NAME=VALUE` pairs (in order).
pub fn table_of(entries: Vec<(String, String)>) -> Result<FieldTable, String> {
    let mut t = FieldTable::new();
    for (k, v) in entries {
        let key = ShortString::try_from(k.as_str()).map_err(|e| e.to_string())?;
        t.push(key, parse_field_value(&v)?);
    }
    Ok(t)
}

/// Quotes text the way transcripts show strings.
pub fn quote(b: &[u8]) -> String {
    let mut s = String::from("\"");
    for &c in b {
        match c {
            b'"' => s.push_str("\\\""),
            b'\\' => s.push_str("\\\\"),
            b'\n' => s.push_str("\\n"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s.push('"');
    s
}

/// Renders a field value (type letter, colon, value).
pub fn show_value(v: &FieldValue) -> String {
    match v {
        FieldValue::Bool(b) => format!("t:{b}"),
        FieldValue::I8(x) => format!("b:{x}"),
        FieldValue::U8(x) => format!("B:{x}"),
        FieldValue::I16(x) => format!("s:{x}"),
        FieldValue::U16(x) => format!("u:{x}"),
        FieldValue::I32(x) => format!("I:{x}"),
        FieldValue::U32(x) => format!("i:{x}"),
        FieldValue::I64(x) => format!("l:{x}"),
        FieldValue::F32(x) => format!("f:{x:?}"),
        FieldValue::F64(x) => format!("d:{x:?}"),
        FieldValue::Decimal(d) => format!("D:{}e-{}", d.value, d.scale),
        FieldValue::LongString(s) => format!("S:{}", quote(s.as_bytes())),
        FieldValue::ByteArray(s) => format!("x:{}", quote(s.as_bytes())),
        FieldValue::Array(a) => format!(
            "A:[{}]",
            a.iter().map(show_value).collect::<Vec<_>>().join(", ")
        ),
        FieldValue::Timestamp(t) => format!("T:{t}"),
        FieldValue::Table(t) => format!("F:{}", show_table(t)),
        FieldValue::Void => "V".to_string(),
        other => format!("{other:?}"),
    }
}

/// Renders a table in wire order.
pub fn show_table(t: &FieldTable) -> String {
    let items: Vec<String> = t
        .iter()
        .map(|(k, v)| format!("{}={}", k.to_string_lossy(), show_value(v)))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// A method argument type: parsed from scenario text, rendered into
/// transcripts.
pub trait Val: Sized {
    /// From the text of a `name=value` argument.
    fn parse_val(s: &str) -> Result<Self, String>;
    /// For the transcript.
    fn show(&self) -> String;
}

macro_rules! int_val {
    ($($t:ty),*) => {$(
        impl Val for $t {
            fn parse_val(s: &str) -> Result<Self, String> {
                s.parse().map_err(|e| format!("{s:?}: {e}"))
            }
            fn show(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
int_val!(u8, u16, u32, u64);

impl Val for bool {
    fn parse_val(s: &str) -> Result<Self, String> {
        parse_bool(s)
    }
    fn show(&self) -> String {
        self.to_string()
    }
}

impl Val for ShortString {
    fn parse_val(s: &str) -> Result<Self, String> {
        ShortString::try_from(s).map_err(|e| e.to_string())
    }
    fn show(&self) -> String {
        quote(self.as_bytes())
    }
}

impl Val for LongString {
    fn parse_val(s: &str) -> Result<Self, String> {
        Ok(LongString::from(s))
    }
    fn show(&self) -> String {
        quote(self.as_bytes())
    }
}

impl Val for FieldTable {
    fn parse_val(s: &str) -> Result<Self, String> {
        if s.is_empty() || s == "{}" {
            Ok(FieldTable::new())
        } else {
            Err(format!(
                "tables are written as NAME.KEY=VALUE arguments, not {s:?}"
            ))
        }
    }
    fn show(&self) -> String {
        show_table(self)
    }
}

/// Takes a field's value from the arguments: `name=value`, or for tables
/// `name.KEY=VALUE` entries (`arguments.` may be written `arg.`).
fn take_field<T: Val + 'static>(args: &mut Args, name: &str) -> Result<Option<T>, String> {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<FieldTable>() {
        let mut entries = args.take_prefixed(name);
        if name == "arguments" {
            entries.extend(args.take_prefixed("arg"));
        }
        let whole = args.take(name);
        if entries.is_empty() && whole.is_none() {
            return Ok(None);
        }
        let t = table_of(entries)?;
        // T is FieldTable: round-trip through Box<dyn Any>.
        let b: Box<dyn std::any::Any> = Box::new(t);
        return Ok(b.downcast::<T>().ok().map(|b| *b));
    }
    match args.take(name) {
        Some(v) => T::parse_val(&v)
            .map(Some)
            .map_err(|e| format!("{name}: {e}")),
        None => Ok(None),
    }
}

macro_rules! method_codegen {
    ($(
        $Name:ident ($cid:literal, $mid:literal, $name:literal, $from:ident, $content:ident,
                     [$($reply:ident),*], [$($nw:ident)?])
        { $( $f:ident : $ty:ident = $fname:literal ),* $(,)? }
    )*) => {
        /// The method's arguments as `(spec-name, rendered value)` in wire order.
        pub fn method_fields(m: &Method) -> Vec<(&'static str, String)> {
            match m {
                $(
                    #[allow(unused_variables)]
                    Method::$Name(x) => vec![$( ($fname, Val::show(&x.$f)) ),*],
                )*
                #[allow(unreachable_patterns)]
                _ => vec![],
            }
        }

        /// Builds a method by its spec name from `name=value` arguments
        /// (absent fields take their defaults: 0, false, empty).
        pub fn build_method(name: &str, args: &mut Args) -> Result<Method, String> {
            match name {
                $(
                    $name => {
                        #[allow(unused_mut)]
                        let mut x = $Name::default();
                        $(
                            if let Some(v) = take_field::<$ty>(args, $fname)? {
                                x.$f = v;
                            }
                        )*
                        Ok(Method::$Name(x))
                    }
                )*
                _ => Err(format!("unknown method {name:?}")),
            }
        }
    };
}
for_each_method!(method_codegen);

macro_rules! property_codegen {
    ($( $f:ident : $ty:ident = $name:literal @ $bit:literal ),* $(,)?) => {
        /// Present properties as `(spec-name, rendered value)` in flag order.
        pub fn property_fields(p: &BasicProperties) -> Vec<(&'static str, String)> {
            let mut out = vec![];
            $(
                if let Some(v) = &p.$f {
                    out.push(($name, Val::show(v)));
                }
            )*
            out
        }

        /// Takes properties by their spec names (`headers.KEY=VALUE` for
        /// headers; `headers={}` for an empty table).
        pub fn build_properties(args: &mut Args) -> Result<BasicProperties, String> {
            let mut p = BasicProperties::default();
            $(
                if let Some(v) = take_field::<$ty>(args, $name)? {
                    p.$f = Some(v);
                }
            )*
            Ok(p)
        }
    };
}
for_each_basic_property!(property_codegen);

/// Renders a method: `class.method field=value ...`.
pub fn show_method(m: &Method) -> String {
    let mut s = m.name().to_string();
    for (k, v) in method_fields(m) {
        s.push(' ');
        s.push_str(k);
        s.push('=');
        s.push_str(&v);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_shows() {
        let toks = tokenize(r#"queue=a durable arg.x-max-length=l:3 # c"#).unwrap();
        let mut a = parse_args(&toks);
        let m = build_method("queue.declare", &mut a).unwrap();
        a.finish().unwrap();
        assert_eq!(
            show_method(&m),
            "queue.declare ticket=0 queue=\"a\" passive=false durable=true exclusive=false \
             auto-delete=false nowait=false arguments={x-max-length=l:3}"
        );
    }
}
