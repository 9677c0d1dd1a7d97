//! Replays every committed fuzz finding through the entry points that found it.
//!
//! Each file under `tests/fuzz_regressions/<target>/` is an input (minimised by
//! `cargo fuzz tmin`) that once made the fuzz target `<target>` fail: a panic, an internal
//! error on user input, engines that disagreed. The harness is the fuzz crate's own
//! (`fuzz/src/lib.rs`, included by path), so CI replays the corpus without cargo fuzz or
//! libFuzzer. A target directory with no findings holds only its README.

#[allow(dead_code)]
#[path = "../fuzz/src/lib.rs"]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

/// Every input under `tests/fuzz_regressions/<target>/` except READMEs.
fn inputs(target: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    if !dir.exists() {
        // git keeps no empty directories: a target without findings has none.
        return Vec::new();
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_none_or(|e| e != "md"))
        .collect();
    files.sort();
    files
}

/// Runs every target's inputs, collecting all failures so one run reports them all.
#[test]
fn every_fuzz_finding_stays_fixed() {
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, run) in harness::TARGETS {
        for file in inputs(target) {
            let data = std::fs::read(&file).expect("read regression input");
            replayed += 1;
            match catch_unwind(AssertUnwindSafe(|| run(&data))) {
                Ok(Ok(())) => {}
                Ok(Err(finding)) => failures.push(format!("{}: {finding}", file.display())),
                Err(_) => failures.push(format!("{}: panicked", file.display())),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {replayed} inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// The harness itself: golden seeds of every parser are accepted (not refused) under the
/// harness's budget through the same entry points, so a budget too small for real models
/// (which would make fuzzing and the replay vacuous) fails here.
#[test]
fn harness_accepts_golden_seeds() {
    let case = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keras-golden/case_0000");
    let opts = lcjit::LoadOptions {
        memory_budget: harness::MEMORY_BUDGET,
        seed: 0,
    };
    let mut model = lcjit::Model::load_with(case.join("model.h5"), &opts).expect("golden .h5");
    model
        .load_weights(case.join("weights.npz"))
        .expect("golden .npz");
    let x = lcjit::io::read_npy(&case.join("x.npy")).expect("golden .npy");
    model.predict(&x).expect("golden predict");
    for (target, file) in [
        ("keras_json", "model.json"),
        ("h5", "model.h5"),
        ("npz", "weights.npz"),
        ("npy", "x.npy"),
    ] {
        let run = harness::TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .expect("target")
            .1;
        let data = std::fs::read(case.join(file)).expect("golden file");
        assert_eq!(run(&data), Ok(()), "{target} on {file}");
    }
}
