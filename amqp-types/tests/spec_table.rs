//! The protocol table must agree with RabbitMQ's JSON spec shipped in
//! `spec/amqp-rabbitmq-0.9.1.json` (linked as `tests/data/` in this crate, so
//! that the packaged crate carries it): every class, method, id, argument (name,
//! order, domain), the synchronous and content flags, and every basic
//! property. A row added to or changed in the table without the spec (or the
//! other way round) fails here.

use amqp_types::method::Domain;
use amqp_types::{BasicProperties, MethodKind};
use serde_json::Value;
use std::collections::HashMap;

fn spec() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/amqp-rabbitmq-0.9.1.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("spec JSON")).expect("valid JSON")
}

fn domain(name: &str) -> Domain {
    match name {
        "octet" => Domain::Octet,
        "short" => Domain::Short,
        "long" => Domain::Long,
        "longlong" | "timestamp" => Domain::LongLong,
        "bit" => Domain::Bit,
        "shortstr" => Domain::ShortStr,
        "longstr" => Domain::LongStr,
        "table" => Domain::Table,
        other => panic!("unknown primitive {other}"),
    }
}

#[test]
fn table_matches_rabbitmq_spec() {
    let spec = spec();
    let domains: HashMap<String, String> = spec["domains"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d[0].as_str().unwrap().to_owned(),
                d[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut seen = 0;
    for class in spec["classes"].as_array().unwrap() {
        let cname = class["name"].as_str().unwrap();
        let cid = class["id"].as_u64().unwrap() as u16;
        for m in class["methods"].as_array().unwrap() {
            let mname = m["name"].as_str().unwrap();
            let mid = m["id"].as_u64().unwrap() as u16;
            let full = format!("{cname}.{mname}");
            let kind = MethodKind::from_ids(cid, mid)
                .unwrap_or_else(|| panic!("{full} missing from the table"));
            let info = kind.info();
            assert_eq!(info.name, full);
            assert_eq!(
                info.synchronous(),
                m["synchronous"].as_bool().unwrap_or(false),
                "{full}: synchronous flag"
            );
            assert_eq!(
                info.has_content,
                m["content"].as_bool().unwrap_or(false),
                "{full}: content"
            );
            let args = m["arguments"].as_array().unwrap();
            assert_eq!(info.fields.len(), args.len(), "{full}: argument count");
            for (f, a) in info.fields.iter().zip(args) {
                assert_eq!(f.name, a["name"].as_str().unwrap(), "{full}: argument name");
                let prim = match (a.get("type"), a.get("domain")) {
                    (Some(t), _) => t.as_str().unwrap().to_owned(),
                    (None, Some(d)) => domains[d.as_str().unwrap()].clone(),
                    _ => panic!("{full}: argument without type"),
                };
                assert_eq!(f.domain, domain(&prim), "{full}.{}: domain", f.name);
            }
            if let Some(nw) = info.nowait_field {
                assert!(args.iter().any(|a| a["name"] == nw), "{full}: nowait");
            } else {
                assert!(
                    !args.iter().any(|a| a["name"] == "nowait"),
                    "{full}: nowait not declared"
                );
            }
            seen += 1;
        }
    }
    assert_eq!(
        seen,
        MethodKind::ALL.len(),
        "table has methods the spec lacks"
    );
    assert_eq!(seen, 66);

    let basic = spec["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "basic")
        .unwrap();
    let props: Vec<&str> = basic["properties"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(props, BasicProperties::NAMES);
}
