//! Every input saved in `fuzz/regressions/<target>/` goes through the same
//! checks as the fuzz targets (`fuzz/harness.rs`): inputs a `make fuzz`
//! campaign found failing (fixed since), and hand-picked edge cases. A new
//! finding is kept by copying its file there.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../fuzz/harness.rs"]
#[allow(dead_code)] // the seed writer is for `make fuzz`
mod harness;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{} holds saved inputs", dir.display());
    for file in files {
        let data = std::fs::read(&file).unwrap();
        // A failed check names the file it came from.
        let outcome = std::panic::catch_unwind(|| check(&data));
        assert!(outcome.is_ok(), "{} fails its check", file.display());
    }
}

#[test]
fn saved_record_decoding_inputs_pass_the_checks() {
    replay("decode", harness::decode);
}

#[test]
fn saved_changelog_inputs_pass_the_checks() {
    replay("changelog", harness::changelog);
}
