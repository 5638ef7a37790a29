//! Replays every committed input of `fuzz/corpus/codec_ops/` through the
//! same check the `codec_ops` target runs (both roles, wired and lone: no panic, valid frames within frame_max), so
//! stable `cargo test` re-checks everything the fuzzer kept. A missing or
//! empty corpus directory is a failure.

use std::fs;
use std::path::Path;

#[test]
fn codec_ops_corpus_replays() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/codec_ops");
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus directory {} unreadable: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus directory {} is empty",
        dir.display()
    );
    let mut bytes = 0;
    for f in &files {
        let data = fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        bytes += data.len();
        let r = std::panic::catch_unwind(|| amqp_fuzz::codec::codec_ops(&data));
        assert!(r.is_ok(), "input {} fails the codec_ops check", f.display());
    }
    println!("codec_ops: {} inputs, {bytes} bytes replayed", files.len());
}
