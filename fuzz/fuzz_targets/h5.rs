//! Fuzz target `h5`: see `lcjit_fuzz::h5` for the entry points it drives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = lcjit_fuzz::h5(data) {
        panic!("finding: {finding}");
    }
});
