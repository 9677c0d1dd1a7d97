//! Fuzz target `keras_json`: see `lcjit_fuzz::keras_json` for the entry points it drives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = lcjit_fuzz::keras_json(data) {
        panic!("finding: {finding}");
    }
});
