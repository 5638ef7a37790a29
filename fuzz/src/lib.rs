//! The checks behind the fuzz targets, one public function per target, so
//! that `cargo test -p amqp-fuzz` replays every committed corpus input.

pub mod broker;
pub mod codec;
pub mod router;
pub mod tls;
pub mod wire;

use stats_alloc::{Region, StatsAlloc};
use std::alloc::System;
use std::fs;
use std::path::{Path, PathBuf};

/// The most one input of any target may allocate in total (every
/// allocation added up, freed or not): 256 MiB. libFuzzer's
/// `-malloc_limit_mb` and `-rss_limit_mb` only see single allocations and
/// the peak; this catches work that is quadratic in the input (a 581-byte
/// `codec_ops` input once made 8.3 GB of short-lived allocations).
pub const ALLOCATION_LIMIT: usize = 256 << 20;

/// Bytes allocated in total while `f` ran, counted by `counter` (the
/// binary's `#[global_allocator]`, a [`StatsAlloc`]); reallocations count
/// their growth.
pub fn allocated_by(counter: &'static StatsAlloc<System>, f: impl FnOnce()) -> usize {
    let region = Region::new(counter);
    f();
    let stats = region.change();
    stats
        .bytes_allocated
        .saturating_add(stats.bytes_reallocated.max(0) as usize)
}

/// Runs one input's check `f` and panics (a finding, for the fuzzer) if it
/// allocated more than [`ALLOCATION_LIMIT`] in total. The fuzz targets run
/// every input through this, with a counting global allocator.
pub fn bounded_allocation(counter: &'static StatsAlloc<System>, f: impl FnOnce()) {
    let allocated = allocated_by(counter, f);
    assert!(
        allocated <= ALLOCATION_LIMIT,
        "one input allocated {allocated} bytes in total (limit {ALLOCATION_LIMIT})"
    );
}

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
