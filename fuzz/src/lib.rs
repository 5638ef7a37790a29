//! The checks behind the fuzz targets, one public function per target, so
//! that `cargo test -p amqp-fuzz` replays every committed corpus input.

pub mod broker;
pub mod codec;
pub mod router;
pub mod wire;

use std::fs;
use std::path::{Path, PathBuf};

/// Every file of `dir`, sorted, with its bytes; panics if `dir` is missing
/// or empty.
fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let entries = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus directory {} unreadable: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} is empty",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            let data = fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p, data)
        })
        .collect()
}

/// Every committed input of a fuzz target: `fuzz/corpus/<target>/` (which
/// must exist and be non-empty) and, if present,
/// `fuzz/artifacts-regressions/<target>/`, for the replay tests.
pub fn committed_inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut all = inputs(&root.join("corpus").join(target));
    let regressions = root.join("artifacts-regressions").join(target);
    if regressions.exists() {
        all.extend(inputs(&regressions));
    }
    all
}

/// Runs a target's `check` over every committed input of `target` (see
/// [`committed_inputs`]), as the replay tests do: a failing input fails the
/// test with its path, so it can be reproduced with
/// `cargo fuzz run <target> <path>`. Returns the inputs, for tests that
/// check what the corpus reaches.
pub fn replay(target: &str, check: fn(&[u8])) -> Vec<Vec<u8>> {
    let all = committed_inputs(target);
    let mut bytes = 0;
    for (path, data) in &all {
        bytes += data.len();
        let r = std::panic::catch_unwind(|| check(data));
        assert!(
            r.is_ok(),
            "input {} fails the {target} check",
            path.display()
        );
    }
    println!("{target}: {} inputs, {bytes} bytes replayed", all.len());
    all.into_iter().map(|(_, d)| d).collect()
}
