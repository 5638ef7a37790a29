//! `--definitions FILE` imports a real RabbitMQ export: its users log in
//! with the passwords RabbitMQ hashed, its queues and bindings exist.

mod support;

use amqp_codec::types::Method;
use amqp_codec::types::method::QueueDeclare;
use amqp_codec::{ClientConfig, Credentials};
use std::process::Command;
use support::{Broker, Client};

#[test]
fn a_rabbitmq_export_is_imported_with_its_users_and_queues() {
    if !support::interop("definitions") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("amqp-broker-defs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("defs.json");
    // A user and a durable queue made in RabbitMQ for this test.
    let ctl = |args: &[&str]| -> Vec<u8> {
        let out = Command::new("rabbitmqctl")
            .args(args)
            .env(
                "PATH",
                format!(
                    "{}:/usr/sbin:/usr/lib/rabbitmq/bin",
                    std::env::var("PATH").unwrap_or_default()
                ),
            )
            .output()
            .expect("rabbitmqctl (bash .ci/services installs RabbitMQ)");
        assert!(
            out.status.success(),
            "rabbitmqctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    // (A run that failed half-way may have left the user behind.)
    let _ = Command::new("rabbitmqctl")
        .args(["delete_user", "defs-user"])
        .env(
            "PATH",
            format!("{}:/usr/sbin", std::env::var("PATH").unwrap_or_default()),
        )
        .output();
    ctl(&["add_user", "defs-user", "s3cret-pw"]);
    ctl(&["set_permissions", "-p", "/", "defs-user", ".*", ".*", ".*"]);
    // (To stdout: the node may not be allowed to write where the test is.)
    std::fs::write(&path, ctl(&["export_definitions", "-", "--silent"])).unwrap();
    ctl(&["delete_user", "defs-user"]);
    let broker = Broker::start(5780..5790, &["--definitions", path.to_str().unwrap()]);
    let config = |user: &str, pw: &str| ClientConfig {
        credentials: Credentials::plain(user, pw),
        ..ClientConfig::default()
    };
    // The export's user, with the password RabbitMQ hashed (SHA-256).
    let mut c = Client::connect_with(broker.addr, config("defs-user", "s3cret-pw"));
    let Method::QueueDeclareOk(ok) = c.call(QueueDeclare {
        queue: "defs-test-queue".try_into().unwrap(),
        ..Default::default()
    }) else {
        panic!("declare-ok expected")
    };
    assert_eq!(ok.queue.as_str(), Some("defs-test-queue"));
    // guest (also in the export) and the test user `limited` log in too.
    Client::connect_with(broker.addr, config("limited", "limited"));
    Client::connect(broker.addr);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_wrong_password_is_refused_after_import() {
    let dir = std::env::temp_dir().join(format!("amqp-broker-defs2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("defs.json");
    // guest/guest hashed by RabbitMQ 3.10 (salt and SHA-256 digest).
    std::fs::write(
        &path,
        r#"{"users":[{"name":"guest","password_hash":"jfsx+8mbmsQG4/GkyuDWoiCnfhDFATh+D0SP6OYjc92sBGoY",
            "hashing_algorithm":"rabbit_password_hashing_sha256","tags":["administrator"]}],
            "vhosts":[{"name":"/"}],
            "permissions":[{"user":"guest","vhost":"/","configure":".*","write":".*","read":".*"}],
            "queues":[{"name":"imported","vhost":"/","durable":true,"auto_delete":false,"arguments":{}}]}"#,
    )
    .unwrap();
    let broker = Broker::start(5780..5790, &["--definitions", path.to_str().unwrap()]);
    let mut c = Client::connect(broker.addr);
    let Method::QueueDeclareOk(ok) = c.call(QueueDeclare {
        queue: "imported".try_into().unwrap(),
        passive: true,
        ..Default::default()
    }) else {
        panic!("the imported queue exists")
    };
    assert_eq!(ok.message_count, 0);
    let refused = std::panic::catch_unwind(|| {
        Client::connect_with(
            broker.addr,
            ClientConfig {
                credentials: Credentials::plain("guest", "wrong"),
                ..ClientConfig::default()
            },
        )
    });
    assert!(refused.is_err(), "a wrong password must not log in");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Declares `queue` (durable), publishes `n` messages and returns how many
/// it holds.
fn fill(c: &mut Client, queue: &str, n: usize) -> u32 {
    let declare = |passive| QueueDeclare {
        queue: queue.try_into().unwrap(),
        durable: true,
        passive,
        ..Default::default()
    };
    c.call(declare(false));
    for i in 0..n {
        c.publish(1, "", queue, &format!("m{i}"));
    }
    let Method::QueueDeclareOk(ok) = c.call(declare(true)) else {
        panic!("declare-ok expected")
    };
    ok.message_count
}

#[test]
fn policies_apply_from_a_definitions_file_and_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("amqp-broker-defs3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("defs.json");
    std::fs::write(
        &path,
        r#"{"vhosts":[{"name":"/"}],
            "policies":[{"vhost":"/","name":"short","pattern":"^short$","apply-to":"queues",
                         "definition":{"max-length":1},"priority":0}]}"#,
    )
    .unwrap();
    let data = dir.join("data");
    let api = || format!("127.0.0.1:{}", support::free_ports(15700..15710, 1)[0]);
    let first_api = api();
    let broker = Broker::start(
        5780..5790,
        &[
            "--definitions",
            path.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--management",
            &first_api,
        ],
    );
    let mut c = Client::connect(broker.addr);
    assert_eq!(fill(&mut c, "short", 3), 1, "the imported policy's limit");
    // A policy set through the API.
    let r = support::http(
        first_api.parse().unwrap(),
        "PUT",
        "/api/policies/%2F/later",
        Some("guest:guest"),
        r#"{"pattern":"^later$","apply-to":"queues","definition":{"max-length":2}}"#,
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    drop(c);
    assert!(broker.terminate().is_some_and(|s| s.success()));
    // Both come back with the data directory.
    let second_api = api();
    let broker = Broker::start(
        5780..5790,
        &[
            "--data-dir",
            data.to_str().unwrap(),
            "--management",
            &second_api,
        ],
    );
    let r = support::http(
        second_api.parse().unwrap(),
        "GET",
        "/api/policies/%2F",
        Some("guest:guest"),
        "",
    );
    let names: Vec<String> = r
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["later", "short"]);
    let mut c = Client::connect(broker.addr);
    assert_eq!(fill(&mut c, "later", 3), 2, "the API's policy, recovered");
    drop(c);
    // (A clean stop: the store thread writes the new queue's definition
    // in its next batch.)
    assert!(broker.terminate().is_some_and(|s| s.success()));
    // `export-definitions` writes what the data directory holds, as a
    // RabbitMQ export.
    let out = dir.join("export.json");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_amqp-broker"))
        .args(["--data-dir", data.to_str().unwrap(), "export-definitions"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    let export: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let names = |k: &str| -> Vec<String> {
        export[k]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names("policies"), ["later", "short"]);
    assert!(names("queues").contains(&"later".to_string()));
    assert!(names("users").contains(&"guest".to_string()));
    assert!(names("vhosts").contains(&"/".to_string()));
    // And says what to do when there is nothing to export.
    let empty = std::process::Command::new(env!("CARGO_BIN_EXE_amqp-broker"))
        .args([
            "--data-dir",
            dir.join("nowhere").to_str().unwrap(),
            "export-definitions",
        ])
        .output()
        .unwrap();
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("start the broker on it"));
    let _ = std::fs::remove_dir_all(&dir);
}
