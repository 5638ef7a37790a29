//! Definitions: a file exported by a real RabbitMQ (3.10,
//! `tests/data/definitions.json`, made by `tests/data/make_definitions.py`)
//! loads, routes every recorded publish exactly where RabbitMQ put it
//! (`tests/data/routes.json`), and survives a save/load round trip.

use amqp_router::definitions::{DefinitionsError, Topology, json_to_table};
use amqp_router::{RouteScratch, Router};
use serde_json::Value;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn load() -> (Topology, Value) {
    let defs =
        std::fs::read_to_string(format!("{DATA}/definitions.json")).expect("definitions.json");
    let routes = std::fs::read_to_string(format!("{DATA}/routes.json")).expect("routes.json");
    (
        Topology::from_json(&defs).expect("parse"),
        serde_json::from_str(&routes).expect("routes"),
    )
}

/// Replays the recorded publishes; returns how many.
fn replay(router: &Router<String>, routes: &Value) -> usize {
    let mut scratch = RouteScratch::new();
    let mut n = 0;
    for r in routes["routes"].as_array().expect("routes") {
        let headers = r["headers"].as_object().map(json_to_table);
        let routed = router
            .route(
                r["exchange"].as_str().unwrap().as_bytes(),
                r["routing_key"].as_str().unwrap().as_bytes(),
                headers.as_ref(),
                &mut scratch,
            )
            .unwrap_or_else(|e| panic!("{r}: {e}"));
        let mut got: Vec<String> = routed.handles().cloned().collect();
        got.sort();
        let want: Vec<String> = r["queues"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| q.as_str().unwrap().to_owned())
            .collect();
        assert_eq!(got, want, "publish {r}");
        n += 1;
    }
    n
}

#[test]
fn real_export_routes_as_rabbitmq_did() {
    let (topology, routes) = load();
    let vhost = routes["vhost"].as_str().unwrap();
    assert!(topology.vhosts().contains(&vhost.to_owned()));
    let loaded = topology.load(vhost, |n| n.to_string()).expect("load");
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    let router = loaded.router;
    assert!(router.exchange(b"orders.topic").is_some());
    assert_eq!(
        router
            .exchange(b"orders.topic")
            .unwrap()
            .policy_alternate_exchange()
            .unwrap(),
        "unrouted",
        "alternate-exchange from the policy"
    );
    assert!(
        router
            .exchange(b"events")
            .unwrap()
            .policy_alternate_exchange()
            .is_none()
    );
    assert_eq!(router.binding_count(), topology.bindings.len());
    let n = replay(&router, &routes);
    assert!(n >= 10, "only {n} publishes recorded");
}

#[test]
fn save_and_load_round_trip() {
    let (topology, routes) = load();
    let vhost = routes["vhost"].as_str().unwrap();
    let router = topology.to_router(vhost, |n| n.to_string()).expect("load");
    let saved = Topology::from_router(&router);
    assert_eq!(saved.exchanges.len(), topology.exchanges.len());
    assert_eq!(saved.queues.len(), topology.queues.len());
    assert_eq!(saved.bindings.len(), topology.bindings.len());
    let text = saved.to_json();
    let again = Topology::from_json(&text)
        .expect("reparse")
        .to_router(vhost, |n| n.to_string())
        .expect("reload");
    let mut a: Vec<_> = router.bindings().map(|b| format!("{b:?}")).collect();
    let mut b: Vec<_> = again.bindings().map(|b| format!("{b:?}")).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    replay(&again, &routes);
    // Saving again gives the same file.
    assert_eq!(Topology::from_router(&again).to_json(), text);
}

#[test]
fn bad_definitions_are_errors() {
    assert!(matches!(
        Topology::from_json("{"),
        Err(DefinitionsError::Json(_))
    ));
    let unknown_type = r#"{"exchanges": [{"name": "x", "type": "nope"}]}"#;
    let e = Topology::from_json(unknown_type)
        .unwrap()
        .to_router("/", |_| ())
        .unwrap_err();
    assert!(e.to_string().contains("unknown type 'nope'"), "{e}");
    let dangling = r#"{"bindings": [{"source": "amq.direct", "destination": "q", "destination_type": "queue"}]}"#;
    let loaded = Topology::from_json(dangling)
        .unwrap()
        .load("/", |_| ())
        .unwrap();
    assert_eq!(
        loaded.skipped.len(),
        1,
        "a binding to a missing queue is reported"
    );
    assert_eq!(loaded.router.binding_count(), 0);
    let bad_match = r#"{"queues": [{"name": "q"}], "bindings": [{"source": "amq.match", "destination": "q",
        "destination_type": "queue", "arguments": {"x-match": "some"}}]}"#;
    let e = Topology::from_json(bad_match)
        .unwrap()
        .to_router("/", |_| ())
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("Invalid x-match field value <<\"some\">>"),
        "{e}"
    );
}

#[test]
fn other_vhosts_are_left_out() {
    let (topology, _) = load();
    let router = topology
        .to_router("elsewhere", |n| n.to_string())
        .expect("load");
    assert_eq!(router.queues().count(), 0);
    assert_eq!(router.binding_count(), 0);
}
