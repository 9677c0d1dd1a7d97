//! The weights file of an ahead-of-time library (`lcjit aot --weights-file PATH`), written
//! here by lcjit and read by the generated `NAME_create` (see `driver.rs`, which validates
//! it against [`expected_header`]) and by [`read`] in tests.
//!
//! Format, all integers little-endian:
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic `LCJITWTS` |
//! | 8 | 4 | format version, `u32` = 1 |
//! | 12 | 4 | parameter count `n`, `u32` |
//! | 16 | 8·n | length of each parameter in floats, `u64`, graph parameter order |
//! | 16 + 8·n | 4·Σlen | the parameters, canonical layout, `f32` little-endian, back to back |
//!
//! Nothing follows the last float. Invariant: a file is accepted by a library only if its
//! header is byte-for-byte the header [`expected_header`] computes for the library's model
//! (same count, same lengths) and its size is exactly header + 4·Σlen.

use std::path::Path;

use crate::error::{Error, Result};

/// The file's first eight bytes.
pub const MAGIC: &[u8; 8] = b"LCJITWTS";
/// The format version this lcjit writes and its libraries accept.
pub const VERSION: u32 = 1;

/// The header of a weights file holding parameters of these lengths (in floats).
pub fn expected_header(lens: &[usize]) -> Vec<u8> {
    let mut h = Vec::with_capacity(16 + 8 * lens.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&VERSION.to_le_bytes());
    h.extend_from_slice(&(lens.len() as u32).to_le_bytes());
    for &l in lens {
        h.extend_from_slice(&(l as u64).to_le_bytes());
    }
    h
}

/// The complete file for `params` (each one parameter's floats, canonical layout).
pub fn encode(params: &[Vec<f32>]) -> Vec<u8> {
    let lens: Vec<usize> = params.iter().map(Vec::len).collect();
    encode_from(&lens, params.iter().flatten().copied())
}

/// The complete file for parameters of `lens` floats whose values `floats` yields back
/// to back (without an intermediate copy of the parameters).
pub(super) fn encode_from(lens: &[usize], floats: impl Iterator<Item = f32>) -> Vec<u8> {
    let mut out = expected_header(lens);
    out.reserve(4 * lens.iter().sum::<usize>());
    for v in floats {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// Parses a weights file (the inverse of [`encode`]); `path` names it in errors.
pub fn decode(path: &Path, bytes: &[u8]) -> Result<Vec<Vec<f32>>> {
    let bad = |d: String| Error::format(path, "lcjit weights", d);
    if bytes.len() < 16 || &bytes[..8] != MAGIC {
        return Err(bad("bad magic (not an lcjit weights file)".into()));
    }
    let word =
        |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let version = word(8);
    if version != VERSION {
        return Err(bad(format!("version {version}, expected {VERSION}")));
    }
    let n = word(12) as usize;
    let data_at = n
        .checked_mul(8)
        .and_then(|b| b.checked_add(16))
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| bad(format!("truncated header ({n} parameters)")))?;
    let mut lens = Vec::with_capacity(n);
    for i in 0..n {
        let at = 16 + 8 * i;
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[at..at + 8]);
        lens.push(u64::from_le_bytes(b));
    }
    let total: u64 = lens
        .iter()
        .try_fold(0u64, |a, &l| a.checked_add(l))
        .unwrap_or(u64::MAX);
    let expect = total
        .checked_mul(4)
        .and_then(|b| b.checked_add(data_at as u64));
    if expect != Some(bytes.len() as u64) {
        return Err(bad(format!(
            "size {} bytes, the header announces {total} floats after {data_at} header bytes",
            bytes.len()
        )));
    }
    let mut floats = bytes[data_at..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    Ok(lens
        .iter()
        .map(|&l| floats.by_ref().take(l as usize).collect())
        .collect())
}

/// Reads and parses the weights file at `path`.
pub fn read(path: &Path) -> Result<Vec<Vec<f32>>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode(path, &bytes)
}
