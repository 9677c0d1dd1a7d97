//! Checked arithmetic on sizes: element counts, byte counts and batch products.
//!
//! Every size lcjit computes from something a user wrote (a shape in a Keras config, a
//! header in a `.npy`, a dataspace in an HDF5 file, `--batch-size`) goes through these
//! helpers instead of `*` and `+`: release builds do not check overflow, and a wrapped
//! length is a short buffer that a later stage reads past, or a small allocation that
//! passes the memory budget although the real size does not. The rule for new code is
//! simple: **a product or sum of sizes is `size::mul`, `size::add`, `size::elems` or
//! `size::bytes`**, never a bare operator; the result is a [`Overflow`] error that the
//! caller turns into a user error naming the layer, file or flag concerned (usually a
//! budget refusal, since a size that overflows `usize` is over any budget).
//!
//! Invariants: the helpers never panic and never saturate silently; `u64` byte counts
//! are used for budgets (a `usize` may be 32 bits) and `usize` element counts for
//! allocations. Once a graph has passed the budget at a batch size
//! ([`crate::budget`]), every tensor of it at that batch has at most `budget / 4`
//! elements, so the lowering's own index arithmetic stays far from overflow.

/// A size computation overflowed: the size it describes cannot exist in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("size overflows the address space")]
pub struct Overflow;

/// `a · b`, checked.
pub fn mul(a: usize, b: usize) -> Result<usize, Overflow> {
    a.checked_mul(b).ok_or(Overflow)
}

/// `a + b`, checked.
pub fn add(a: usize, b: usize) -> Result<usize, Overflow> {
    a.checked_add(b).ok_or(Overflow)
}

/// `a · b` on byte counts, checked.
pub fn mul64(a: u64, b: u64) -> Result<u64, Overflow> {
    a.checked_mul(b).ok_or(Overflow)
}

/// `a + b` on byte counts, checked.
pub fn add64(a: u64, b: u64) -> Result<u64, Overflow> {
    a.checked_add(b).ok_or(Overflow)
}

/// The number of elements of a tensor of shape `dims` (1 for a scalar), checked.
pub fn elems(dims: &[usize]) -> Result<usize, Overflow> {
    dims.iter().try_fold(1usize, |acc, &d| mul(acc, d))
}

/// Elements of `batch` samples of per-sample shape `dims`, checked.
pub fn batch_elems(batch: usize, dims: &[usize]) -> Result<usize, Overflow> {
    mul(batch, elems(dims)?)
}

/// Bytes of `n` elements of `item` bytes each, checked.
pub fn bytes_of_elems(n: usize, item: u64) -> Result<u64, Overflow> {
    mul64(u64::try_from(n).map_err(|_| Overflow)?, item)
}

/// Bytes of an `f32` tensor of shape `dims`, checked.
pub fn f32_bytes(dims: &[usize]) -> Result<u64, Overflow> {
    bytes_of_elems(elems(dims)?, 4)
}

/// Bytes of `batch` samples of an `f32` tensor of per-sample shape `dims`, checked.
pub fn batch_f32_bytes(batch: usize, dims: &[usize]) -> Result<u64, Overflow> {
    bytes_of_elems(batch_elems(batch, dims)?, 4)
}

/// Whether an array of shape `dims` of `item`-byte elements can exist at all, even when
/// a zero dimension makes it empty: ndarray (and every crate over it) requires the
/// product of the *non-zero* dimensions to fit in `isize`, and panics otherwise. A
/// zero beside huge dimensions would make a plain byte count 0 and hide them.
pub fn representable(dims: &[usize], item: u64) -> Result<(), Overflow> {
    let nonzero = dims
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1usize, |acc, &d| mul(acc, d))?;
    let bytes = bytes_of_elems(nonzero, item.max(1))?;
    if bytes > isize::MAX as u64 {
        return Err(Overflow);
    }
    Ok(())
}

/// `n` as `usize`, checked (a file's 64-bit size on a 32-bit machine).
pub fn to_usize(n: u64) -> Result<usize, Overflow> {
    usize::try_from(n).map_err(|_| Overflow)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_overflow_to_an_error_not_a_wrap() {
        assert_eq!(elems(&[]), Ok(1));
        assert_eq!(elems(&[2, 3, 4]), Ok(24));
        assert_eq!(elems(&[1 << 40, 1 << 40]), Err(Overflow));
        assert_eq!(batch_elems(1 << 62, &[8]), Err(Overflow));
        assert_eq!(f32_bytes(&[1 << 62]), Err(Overflow));
        assert_eq!(batch_f32_bytes(3, &[5]), Ok(60));
        assert_eq!(add(usize::MAX, 1), Err(Overflow));
        assert_eq!(add64(u64::MAX, 1), Err(Overflow));
    }

    #[test]
    fn a_zero_dimension_does_not_hide_huge_ones() {
        assert_eq!(elems(&[0, 1 << 40, 1 << 40]), Ok(0));
        assert_eq!(representable(&[0, 1 << 40, 1 << 40], 4), Err(Overflow));
        assert_eq!(representable(&[0, 1 << 20, 3], 8), Ok(()));
        assert_eq!(representable(&[0], 4), Ok(()));
    }
}
