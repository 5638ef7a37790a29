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
//! own routing path (a [`RouteObserver`]), not from a second matcher; on a
//! headers exchange the bindings that did not match are listed key by key,
//! compared with the router's own [`value_eq`], every value shown with its
//! AMQP type (`"1" (long string)` versus `1 (signed 64-bit)`).
//!
//! Header values are long strings unless typed with a RabbitMQ type letter:
//! `-H retries:I=3`, `-H ratio:d=0.5`, `-H flag:t=true`, `-H raw:x=00ff`,
//! `-H present:V`. Bad input is one line on stderr and exit status 2
//! (usage) or 1 (anything else).

use amqp_examples::fields::{TYPE_LETTERS_HELP, header_spec, parse_header, typed, typed_table};
use amqp_router::definitions::Topology;
use amqp_router::types::{FieldTable, FieldValue};
use amqp_router::{
    AlternateOutcome, BindingId, BindingInfo, DestinationKind, Exchange, RouteObserver,
    RouteScratch, Router, XMatch, value_eq,
};
use std::fmt::Write as _;
use std::process::ExitCode;

const USAGE: &str = "usage: amqp-route --definitions FILE [--vhost V] EXCHANGE ROUTING_KEY [-H key=value | -H key:T=value ...]";

/// `--help`: the usage line and what every option means.
fn help() -> String {
    format!(
        "\
amqp-route: where does a message go, and why?

{USAGE}

Loads the topology of a RabbitMQ definitions export (rabbitmqctl
export_definitions FILE), routes one message published to EXCHANGE with
ROUTING_KEY and prints the walk: every binding that matched, alternate
exchanges taken, the queues reached or \"unroutable\". On a headers
exchange, every binding that did not match is listed with the reason,
key by key; values are shown with their AMQP type, since a headers
exchange never matches a string with a number.

OPTIONS:
    --definitions FILE   the definitions JSON export (required)
    --vhost V            the virtual host (default: the only one in FILE,
                         else \"/\")
    -H, --header SPEC    a message header: key=value (a long string),
                         key:T=value typed by a type letter T, or key:V
                         (void); repeat for more headers
    -h, --help           this text

TYPE LETTERS:
{TYPE_LETTERS_HELP}

EXIT STATUS:
    0  the walk was printed (routed or unroutable)
    1  the file cannot be read or loaded, or the exchange does not exist
    2  usage error
"
    )
}

struct Args {
    definitions: String,
    vhost: Option<String>,
    exchange: String,
    routing_key: String,
    headers: Option<FieldTable>,
}

/// `Ok(None)` when help was asked for.
fn parse_args(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
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
            "-h" | "--help" => return Ok(None),
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
    Ok(Some(Args {
        definitions,
        vhost,
        exchange,
        routing_key,
        headers,
    }))
}

/// Writes the walk as it happens. On a headers exchange, the bindings
/// that did not match are explained key by key once the exchange's
/// matches are known.
struct Explain<'r> {
    out: String,
    router: &'r Router<String>,
    headers: Option<&'r FieldTable>,
    /// The headers exchange being visited and the bindings it matched.
    headers_exchange: Option<(String, Vec<BindingInfo>)>,
}

fn describe(b: &BindingInfo) -> String {
    let mut s = format!("binding '{}'", b.routing_key);
    if !b.arguments.is_empty() {
        s.push(' ');
        typed_table(&b.arguments, &mut s);
    }
    let kind = match b.destination_kind {
        DestinationKind::Queue => "queue",
        DestinationKind::Exchange => "exchange",
    };
    let _ = write!(s, " -> {kind} '{}'", b.destination);
    s
}

/// Why a headers binding did not match `headers`: one line per key the
/// binding's `x-match` looks at.
fn explain_headers_miss(b: &BindingInfo, headers: Option<&FieldTable>, out: &mut String) {
    let kind = XMatch::of(&b.arguments);
    let (name, rule, with_x) = match kind {
        XMatch::All => ("all", "every key must match", false),
        XMatch::Any => ("any", "at least one key must match", false),
        XMatch::AllWithX => ("all-with-x", "every key, x- keys too, must match", true),
        XMatch::AnyWithX => (
            "any-with-x",
            "at least one key, x- keys too, must match",
            true,
        ),
    };
    let _ = writeln!(out, "  not matched: {}", describe(b));
    let _ = writeln!(out, "    x-match {name}: {rule}");
    if headers.is_none_or(FieldTable::is_empty) {
        let _ = writeln!(out, "    the message has no headers");
    }
    for (k, want) in &b.arguments {
        let key = k.to_string_lossy();
        if key == "x-match" || (!with_x && key.starts_with("x-")) {
            continue;
        }
        let _ = write!(out, "    {key}: ");
        match headers.and_then(|h| h.get(k)) {
            None => {
                out.push_str("missing from the message (the binding wants ");
                typed(want, out);
                out.push(')');
            }
            Some(got) if matches!(want, FieldValue::Void) || value_eq(want, got) => {
                out.push_str("matches: ");
                typed(got, out);
            }
            Some(got) => {
                out.push_str("the binding wants ");
                typed(want, out);
                out.push_str(", the message has ");
                typed(got, out);
                if want.letter() != got.letter() {
                    out.push_str(
                        "; the types differ (a headers exchange never matches a string \
                         with a number, nor a boolean with either)",
                    );
                    if let Some(spec) = header_spec(&key, want) {
                        let _ = write!(out, "; to match, send -H {spec}");
                    }
                }
            }
        }
        out.push('\n');
    }
}

impl Explain<'_> {
    /// Explains the non-matching bindings of the headers exchange just
    /// visited, if any.
    fn finish_exchange(&mut self) {
        let Some((name, matched)) = self.headers_exchange.take() else {
            return;
        };
        for b in self.router.bindings() {
            if b.source.as_bytes() == name.as_bytes() && !matched.contains(&b) {
                explain_headers_miss(&b, self.headers, &mut self.out);
            }
        }
    }
}

impl RouteObserver for Explain<'_> {
    fn exchange(&mut self, x: &Exchange) {
        self.finish_exchange();
        let _ = writeln!(self.out, "exchange '{}' ({}):", x.name(), x.type_name());
        if x.type_name() == "headers" {
            self.headers_exchange = Some((x.name().to_string_lossy().into_owned(), Vec::new()));
        }
    }
    fn binding(&mut self, _id: BindingId, b: &BindingInfo) {
        let _ = writeln!(self.out, "  matched {}", describe(b));
        if let Some((_, matched)) = &mut self.headers_exchange {
            matched.push(b.clone());
        }
    }
    fn alternate(&mut self, _from: &Exchange, ae: &[u8], outcome: AlternateOutcome) {
        self.finish_exchange();
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
        self.finish_exchange();
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
            Some(h) => {
                let mut s = " and headers ".to_owned();
                typed_table(h, &mut s);
                s
            }
            None => String::new(),
        }
    );
    let mut explain = Explain {
        out: String::new(),
        router: &router,
        headers: args.headers.as_ref(),
        headers_exchange: None,
    };
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
    explain.finish_exchange();
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
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{}", help());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("amqp-route: {e}\n{USAGE}\n(try --help)");
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
