//! Jump-ahead of the xoshiro256** generator ([`super::Rng`]): the state after `k` draws,
//! computed without drawing them, so that one stream can be drawn in pieces on several
//! threads and still give exactly the values, in the same places, that drawing it from
//! the start would (the Dropout masks of a training step, `reference/dropout.rs`).
//!
//! The generator's state transition is linear over GF(2) (xors, a shift and a rotation
//! of the 256 state bits), so `k` steps are the matrix `T^k`. The powers `T^(2^i)` are
//! made once per process by squaring (each is 256 columns of 256 bits, 8 KiB; the 20
//! that a 512 k-element mask needs take about 2 ms) and kept; a jump applies the powers
//! of the set bits of `k` to the state, at most 64 matrix-vector products.
//!
//! Invariant: `jump(s, k)` is the state `k` calls of `next_u64` leave from `s`, for every
//! `k` (tested against drawing).

use std::sync::{Mutex, OnceLock, PoisonError};

/// A linear map of the state: column `i` is the image of the state with only bit `i`
/// set (bit `i % 64` of word `i / 64`).
type Matrix = Box<[[u64; 4]; 256]>;

/// `m · s`.
fn apply(m: &[[u64; 4]; 256], s: [u64; 4]) -> [u64; 4] {
    let mut out = [0u64; 4];
    for (w, &word) in s.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let col = &m[w * 64 + bits.trailing_zeros() as usize];
            bits &= bits - 1;
            for (o, c) in out.iter_mut().zip(col) {
                *o ^= c;
            }
        }
    }
    out
}

/// `T`, the matrix of one step, read off the generator itself.
fn step() -> Matrix {
    let mut m: Matrix = Box::new([[0; 4]; 256]);
    for (i, col) in m.iter_mut().enumerate() {
        let mut unit = [0u64; 4];
        unit[i / 64] = 1 << (i % 64);
        let mut r = super::Rng::from_state(unit);
        r.next_u64();
        *col = r.state();
    }
    m
}

/// `m²`: column `j` is `m · (m · e_j)`.
fn square(m: &[[u64; 4]; 256]) -> Matrix {
    let mut out: Matrix = Box::new([[0; 4]; 256]);
    for (o, col) in out.iter_mut().zip(m.iter()) {
        *o = apply(m, *col);
    }
    out
}

/// `T^(2^i)` for the `i` made so far.
static POWERS: OnceLock<Mutex<Vec<Matrix>>> = OnceLock::new();

/// The state `k` draws after `s`.
pub(super) fn jump(s: [u64; 4], k: u64) -> [u64; 4] {
    if k == 0 {
        return s;
    }
    let bits = (64 - k.leading_zeros()) as usize;
    let powers = POWERS.get_or_init(|| Mutex::new(Vec::new()));
    // A poisoned lock still holds whole matrices: each is pushed only once complete.
    let mut p = powers.lock().unwrap_or_else(PoisonError::into_inner);
    while p.len() < bits {
        let next = match p.last() {
            Some(m) => square(m),
            None => step(),
        };
        p.push(next);
    }
    let mut s = s;
    for (i, m) in p.iter().enumerate().take(bits) {
        if (k >> i) & 1 == 1 {
            s = apply(m, s);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::Rng;
    use super::jump;

    #[test]
    fn a_jump_lands_where_drawing_does() {
        let mut r = Rng::new(42);
        let start = r.state();
        let mut drawn = 0u64;
        for k in [0u64, 1, 2, 3, 63, 64, 65, 1000, 4097, 65_537, 300_001] {
            while drawn < k {
                r.next_u64();
                drawn += 1;
            }
            assert_eq!(jump(start, k), r.state(), "k = {k}");
        }
    }
}
