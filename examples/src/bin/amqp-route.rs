//! `amqp-route`: where does a message go, and why?
//!
//! ```text
//! amqp-route --definitions FILE [--vhost V] EXCHANGE ROUTING_KEY [-H key=value | -H key:T=value ...]
//! ```
//!
//! Loads the topology of a RabbitMQ definitions export (`rabbitmqctl
//! export_definitions`), routes one message through `amqp-router` and prints
//! the walk: every binding that matched, alternate exchanges taken, and the
//! queues reached, or "unroutable". The explanation comes from the router's
//! own routing path (a [`RouteObserver`]), not from a second matcher.
//!
//! Header values are long strings unless typed with a RabbitMQ type letter:
//! `-H retries:I=3`, `-H ratio:d=0.5`, `-H flag:t=true`, `-H raw:x=00ff`,
//! `-H present:V`. Bad input is one line on stderr and exit status 2
//! (usage) or 1 (anything else).

use amqp_router::definitions::{Topology, erlang_term};
use amqp_router::types::{Decimal, FieldTable, FieldValue, ShortString};
use amqp_router::{
    AlternateOutcome, BindingId, BindingInfo, DestinationKind, Exchange, RouteObserver,
    RouteScratch,
};
use std::fmt::Write as _;
use std::process::ExitCode;

const USAGE: &str = "usage: amqp-route --definitions FILE [--vhost V] EXCHANGE ROUTING_KEY [-H key=value | -H key:T=value ...]";

struct Args {
    definitions: String,
    vhost: Option<String>,
    exchange: String,
    routing_key: String,
    headers: Option<FieldTable>,
}

fn parse_value(letter: &str, text: &str) -> Result<FieldValue, String> {
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

/// `key=value`, `key:T=value` or `key:V`.
fn parse_header(spec: &str) -> Result<(ShortString, FieldValue), String> {
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

fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut definitions, mut vhost, mut positional, mut headers) =
        (None, None, Vec::new(), None::<FieldTable>);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--definitions" => definitions = Some(it.next().ok_or("--definitions needs a file")?),
            "--vhost" => vhost = Some(it.next().ok_or("--vhost needs a name")?),
            "-H" | "--header" => {
                let spec = it.next().ok_or("-H needs key=value")?;
                let (k, v) = parse_header(&spec)?;
                headers.get_or_insert_with(FieldTable::new).push(k, v);
            }
            "-h" | "--help" => return Err(USAGE.into()),
            s if s.starts_with('-') && s.len() > 1 => return Err(format!("unknown option {s}")),
            _ => positional.push(a),
        }
    }
    let definitions = definitions.ok_or("--definitions FILE is required")?;
    let [exchange, routing_key]: [String; 2] =
        positional.try_into().map_err(|p: Vec<String>| {
            format!(
                "expected EXCHANGE and ROUTING_KEY, got {} arguments",
                p.len()
            )
        })?;
    Ok(Args {
        definitions,
        vhost,
        exchange,
        routing_key,
        headers,
    })
}

/// Writes the walk as it happens.
#[derive(Default)]
struct Explain {
    out: String,
}

fn describe(b: &BindingInfo) -> String {
    let mut s = format!("binding '{}'", b.routing_key);
    if !b.arguments.is_empty() {
        let args: Vec<String> = b
            .arguments
            .iter()
            .map(|(k, v)| format!("{k}={}", erlang_term(v)))
            .collect();
        let _ = write!(s, " {{{}}}", args.join(", "));
    }
    let kind = match b.destination_kind {
        DestinationKind::Queue => "queue",
        DestinationKind::Exchange => "exchange",
    };
    let _ = write!(s, " -> {kind} '{}'", b.destination);
    s
}

impl RouteObserver for Explain {
    fn exchange(&mut self, x: &Exchange) {
        let _ = writeln!(self.out, "exchange '{}' ({}):", x.name(), x.type_name());
    }
    fn binding(&mut self, _id: BindingId, b: &BindingInfo) {
        let _ = writeln!(self.out, "  matched {}", describe(b));
    }
    fn alternate(&mut self, _from: &Exchange, ae: &[u8], outcome: AlternateOutcome) {
        let ae = String::from_utf8_lossy(ae);
        let _ = match outcome {
            AlternateOutcome::Followed => writeln!(
                self.out,
                "  no binding matched: alternate exchange '{ae}' taken"
            ),
            AlternateOutcome::AlreadyVisited => {
                writeln!(
                    self.out,
                    "  no binding matched: alternate exchange '{ae}' already visited"
                )
            }
            AlternateOutcome::Missing => {
                writeln!(
                    self.out,
                    "  no binding matched: alternate exchange '{ae}' does not exist"
                )
            }
        };
    }
    fn dead_end(&mut self, _x: &Exchange) {
        let _ = writeln!(self.out, "  no binding matched and no alternate exchange");
    }
    fn default_exchange(&mut self, name: &[u8], found: bool) {
        let name = String::from_utf8_lossy(name);
        let _ = if found {
            writeln!(self.out, "default exchange: queue '{name}' exists")
        } else {
            writeln!(self.out, "default exchange: no queue named '{name}'")
        };
    }
}

fn run(args: Args) -> Result<String, String> {
    let text = std::fs::read_to_string(&args.definitions)
        .map_err(|e| format!("cannot read {}: {e}", args.definitions))?;
    let topology = Topology::from_json(&text).map_err(|e| format!("{}: {e}", args.definitions))?;
    let vhost = match args.vhost {
        Some(v) => v,
        None => match topology.vhosts().as_slice() {
            [one] => one.clone(),
            _ => "/".to_owned(),
        },
    };
    let loaded = topology
        .load(&vhost, |name| name.to_string())
        .map_err(|e| format!("{}: {e}", args.definitions))?;
    let router = loaded.router;
    let mut out = String::new();
    for b in &loaded.skipped {
        let _ = writeln!(
            out,
            "note: binding {} -> {} '{}' left out (missing end)",
            b.source, b.destination_type, b.destination
        );
    }
    let _ = writeln!(
        out,
        "publish to exchange '{}' in vhost '{vhost}' with routing key '{}'{}",
        args.exchange,
        args.routing_key,
        match &args.headers {
            Some(h) => format!(" and headers {h:?}"),
            None => String::new(),
        }
    );
    let mut explain = Explain::default();
    let mut scratch = RouteScratch::new();
    let routed = router
        .route_observed(
            args.exchange.as_bytes(),
            args.routing_key.as_bytes(),
            args.headers.as_ref(),
            &mut scratch,
            &mut explain,
        )
        .map_err(|e| e.reply_text())?;
    out.push_str(&explain.out);
    let mut queues: Vec<&String> = routed.handles().collect();
    queues.sort();
    if queues.is_empty() {
        out.push_str("unroutable: the message reaches no queue (a mandatory publish is returned 312 NO_ROUTE)\n");
    } else {
        let names: Vec<&str> = queues.iter().map(|s| s.as_str()).collect();
        let _ = writeln!(
            out,
            "routed to {} queue(s): {}",
            names.len(),
            names.join(", ")
        );
    }
    Ok(out)
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("amqp-route: {e}");
            if e != USAGE {
                eprintln!("{USAGE}");
            }
            return ExitCode::from(2);
        }
    };
    match run(args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("amqp-route: {e}");
            ExitCode::FAILURE
        }
    }
}
