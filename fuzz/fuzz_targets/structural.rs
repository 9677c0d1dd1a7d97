//! Fuzz target `structural`: see `lcjit_fuzz::structural` for the entry points it drives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = lcjit_fuzz::structural(data) {
        panic!("finding: {finding}");
    }
});
