//! Where the recorded corpora are, for the conformance tests of every crate
//! in the workspace (each includes this file with `#[path]`, so the rule is
//! written once).
//!
//! A corpus directory comes from an environment variable
//! (`AMQP_WIRE_CORPUS`, `AMQP_ROUTING_CORPUS`); set to something that is not
//! a directory, the test fails. Unset, it is the copy committed in this
//! repository, `tests-data/corpus/<kind>` (every crate sits one level below
//! the root); `tests-data/corpus/README.md` describes the formats.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The wire corpus: `AMQP_WIRE_CORPUS`, else `tests-data/corpus/wire`.
pub fn wire_dir() -> PathBuf {
    dir_from("AMQP_WIRE_CORPUS", "wire")
}

/// The routing corpus: `AMQP_ROUTING_CORPUS`, else
/// `tests-data/corpus/routing`.
pub fn routing_dir() -> PathBuf {
    dir_from("AMQP_ROUTING_CORPUS", "routing")
}

fn dir_from(var: &str, kind: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            assert!(dir.is_dir(), "{var}={} is not a directory", dir.display());
            dir
        }
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../tests-data/corpus")
            .join(kind),
    }
}

/// Bytes from the corpus's hex strings (two lowercase or uppercase digits
/// per byte); a malformed string fails the test.
pub fn unhex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}
