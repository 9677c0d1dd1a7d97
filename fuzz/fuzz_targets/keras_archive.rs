//! Fuzz target `keras_archive`: see `lcjit_fuzz::keras_archive` for the entry points it drives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = lcjit_fuzz::keras_archive(data) {
        panic!("finding: {finding}");
    }
});
