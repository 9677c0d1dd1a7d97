//! Fuzz target `npz`: see `lcjit_fuzz::npz` for the entry points it drives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(finding) = lcjit_fuzz::npz(data) {
        panic!("finding: {finding}");
    }
});
