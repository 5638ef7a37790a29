//! Differential property test: random topologies, keys and headers run
//! through the router and through a deliberately naive linear-scan model
//! (`tests/naive/mod.rs`); every operation's result and the topology after
//! it must agree.

mod naive;

use amqp_router::types::{Decimal, FieldArray, FieldTable, FieldValue, ShortString};
use naive::{EXCHANGES, Op, QUEUES, TYPES, WORDS};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = FieldValue> {
    let mut one = FieldTable::new();
    one.insert("a", 1i32);
    let pool = vec![
        FieldValue::I8(1),
        FieldValue::U8(1),
        FieldValue::I16(-1),
        FieldValue::U16(1),
        FieldValue::I32(1),
        FieldValue::U32(1),
        FieldValue::I64(1),
        FieldValue::I64((1 << 53) + 1),
        FieldValue::F64((1u64 << 53) as f64),
        FieldValue::F32(1.0),
        FieldValue::F64(1.0),
        FieldValue::F64(0.0),
        FieldValue::F64(-0.0),
        FieldValue::I32(0),
        FieldValue::F32(1.5),
        FieldValue::F64(1.5),
        FieldValue::Timestamp(1),
        FieldValue::LongString("1".into()),
        FieldValue::ByteArray(b"1"[..].into()),
        FieldValue::LongString("".into()),
        FieldValue::Bool(true),
        FieldValue::Bool(false),
        FieldValue::Decimal(Decimal { scale: 0, value: 1 }),
        FieldValue::Decimal(Decimal {
            scale: 1,
            value: 10,
        }),
        FieldValue::Void,
        FieldValue::Array(FieldArray::new()),
        FieldValue::Table(FieldTable::new()),
        FieldValue::Array(vec![FieldValue::I32(1)].into()),
        FieldValue::Array(vec![FieldValue::I64(1)].into()),
        FieldValue::Table(one),
    ];
    prop::sample::select(pool)
}

/// A table with distinct keys (the naive headers matcher's assumption).
fn table(keys: &'static [&'static str]) -> impl Strategy<Value = FieldTable> {
    prop::collection::vec((prop::sample::select(keys), value()), 0..4).prop_map(|entries| {
        let mut t = FieldTable::new();
        for (k, v) in entries {
            if !t.contains_key(k) {
                t.insert(k, v);
            }
        }
        t
    })
}

fn binding_args() -> impl Strategy<Value = FieldTable> {
    let x_match = prop::sample::select(vec![
        None,
        Some(FieldValue::LongString("all".into())),
        Some(FieldValue::LongString("any".into())),
        Some(FieldValue::LongString("all-with-x".into())),
        Some(FieldValue::LongString("any-with-x".into())),
        Some(FieldValue::LongString("bogus".into())),
        Some(FieldValue::I32(1)),
    ]);
    (x_match, table(&["a", "b", "x-c"]), any::<bool>()).prop_map(|(m, t, first)| {
        let mut out = FieldTable::new();
        if first && let Some(m) = &m {
            out.insert("x-match", m.clone());
        }
        for (k, v) in t.iter() {
            out.push(k.clone(), v.clone());
        }
        if !first && let Some(m) = m {
            out.insert("x-match", m);
        }
        out
    })
}

fn headers() -> impl Strategy<Value = Option<FieldTable>> {
    let cc = prop::sample::select(vec![
        None,
        Some(FieldValue::Array(
            vec![FieldValue::LongString("a".into()), FieldValue::I32(1)].into(),
        )),
        Some(FieldValue::Array(
            vec![FieldValue::LongString("q1".into())].into(),
        )),
        Some(FieldValue::LongString("a".into())),
    ]);
    (table(&["a", "b", "x-c"]), cc, 0..4u8).prop_map(|(mut t, cc, pick)| match pick {
        0 => None,
        _ => {
            if let Some(cc) = cc {
                let k = if pick == 1 { "CC" } else { "BCC" };
                t.push(ShortString::from_static(k), cc);
            }
            Some(t)
        }
    })
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(WORDS), 0..4).prop_map(|w| w.join(".")),
        prop::sample::select(QUEUES).prop_map(String::from),
    ]
}

fn name(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop::sample::select(pool).prop_map(String::from)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (name(EXCHANGES), prop::sample::select(TYPES), prop::bool::weighted(0.3), prop::bool::weighted(0.15), prop::option::weighted(0.3, name(EXCHANGES)))
            .prop_map(|(name, kind, auto_delete, internal, ae)| Op::DeclareExchange { name, kind: kind.into(), auto_delete, internal, ae }),
        1 => (name(EXCHANGES), any::<bool>()).prop_map(|(name, if_unused)| Op::DeleteExchange { name, if_unused }),
        2 => name(QUEUES).prop_map(|name| Op::DeclareQueue { name }),
        1 => name(QUEUES).prop_map(|name| Op::DeleteQueue { name }),
        6 => (name(EXCHANGES), any::<bool>(), name(QUEUES), name(EXCHANGES), key(), prop::option::weighted(0.3, binding_args()))
            .prop_map(|(source, to_queue, q, x, key, args)| Op::Bind { source, dest: if to_queue { q } else { x }, to_queue, key, args: args.unwrap_or_default() }),
        2 => (name(EXCHANGES), any::<bool>(), name(QUEUES), name(EXCHANGES), key(), prop::option::weighted(0.3, binding_args()))
            .prop_map(|(source, to_queue, q, x, key, args)| Op::Unbind { source, dest: if to_queue { q } else { x }, to_queue, key, args: args.unwrap_or_default() }),
        6 => (name(EXCHANGES), key(), headers()).prop_map(|(exchange, key, headers)| Op::Route { exchange, key, headers }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn router_agrees_with_naive_model(ops in prop::collection::vec(op(), 1..60)) {
        naive::check(&ops);
    }

    #[test]
    fn topic_matching_agrees(pattern in prop::collection::vec(prop::sample::select(WORDS), 0..6),
                             keys in prop::collection::vec(prop::collection::vec(prop::sample::select(&["a", "b", "c", ""][..]), 0..6), 1..8)) {
        let mut ops = vec![
            Op::DeclareExchange { name: "x0".into(), kind: "topic".into(), auto_delete: false, internal: false, ae: None },
            Op::DeclareQueue { name: "q0".into() },
            Op::Bind { source: "x0".into(), dest: "q0".into(), to_queue: true, key: pattern.join("."), args: FieldTable::new() },
        ];
        for k in keys {
            ops.push(Op::Route { exchange: "x0".into(), key: k.join("."), headers: None });
        }
        naive::check(&ops);
    }
}

/// The model itself must be able to disagree: a sanity check that the
/// harness notices a difference.
#[test]
#[should_panic(expected = "differs")]
fn harness_detects_differences() {
    let mut naive = naive::Naive::new();
    let op = Op::DeclareQueue { name: "q0".into() };
    naive.apply(&op).unwrap();
    let mut router: amqp_router::Router<String> = amqp_router::Router::new("/");
    assert_eq!(
        naive::router_snapshot(&router),
        naive.snapshot(),
        "topology differs"
    );
    let _ = &mut router;
}

#[test]
fn naive_topic_matcher_basics() {
    assert!(naive::topic_match("#", ""));
    assert!(naive::topic_match("", ""));
    assert!(!naive::topic_match("*", ""));
    assert!(naive::topic_match("a.#.b", "a.b"));
    assert!(naive::topic_match("*.*", "."));
    assert!(!naive::topic_match("a.*", "a"));
}
