//! Fuzz target `npy`: see `lcjit_fuzz::npy` for the entry points it drives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = lcjit_fuzz::npy(data) {
        panic!("finding: {finding}");
    }
});
