//! Window geometry shared by shape inference, weight layout conversion and every back end.
//!
//! All functions work on one spatial axis. Arithmetic is checked: sizes come from user
//! files and may be absurd, so overflow is reported as `None` rather than wrapping.

use super::ops::Padding;

/// Keras `conv_output_length` for a dilated window: `valid` → `ceil((n − dk + 1)/s)`,
/// `same`/`causal` → `ceil(n/s)`, where `dk = d·(k−1)+1`. `None` when the output would be
/// empty or a size overflows.
pub fn output_len(n: usize, k: usize, s: usize, d: usize, padding: Padding) -> Option<usize> {
    if k == 0 || s == 0 || d == 0 {
        return None;
    }
    let dk = d.checked_mul(k - 1)?.checked_add(1)?;
    let m = match padding {
        Padding::Valid => {
            if n < dk {
                return None;
            }
            n - dk + 1
        }
        Padding::Same | Padding::Causal => n,
    };
    if m == 0 {
        return None;
    }
    Some(m.div_ceil(s))
}

/// First input index (may be negative) of the window of output `o` of a locally
/// connected layer: `o·s` for `valid`, `o·s − floor(dk/2)` for Keras's LC `same`
/// (keras-lc-semantics §3.4, where `dk` is the dilated kernel extent; with `d = 1` this is
/// Keras's `floor(k/2)`). Taps outside `[0, n)` do not exist (their weights are zero in
/// the canonical layout).
pub fn lc_window_start(o: usize, k: usize, s: usize, d: usize, padding: Padding) -> i64 {
    let base = (o as i64) * (s as i64);
    match padding {
        Padding::Valid => base,
        Padding::Same | Padding::Causal => {
            let dk = (d as i64) * (k as i64 - 1) + 1;
            base - dk / 2
        }
    }
}

/// TensorFlow's padding before the first element for convolution and pooling:
/// `valid` → 0, `same` → `floor(max((out−1)·s + dk − n, 0) / 2)`, `causal` → `dk − 1`.
pub fn tf_pad_before(n: usize, k: usize, s: usize, d: usize, padding: Padding) -> usize {
    let dk = d * (k - 1) + 1;
    match padding {
        Padding::Valid => 0,
        Padding::Causal => dk - 1,
        Padding::Same => {
            let out = n.div_ceil(s);
            let total = ((out - 1) * s + dk).saturating_sub(n);
            total / 2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keras_output_lengths() {
        // keras-lc-semantics §1.1 table.
        assert_eq!(output_len(8, 3, 1, 1, Padding::Valid), Some(6));
        assert_eq!(output_len(8, 3, 2, 1, Padding::Valid), Some(3));
        assert_eq!(output_len(8, 3, 3, 1, Padding::Valid), Some(2));
        assert_eq!(output_len(8, 2, 3, 1, Padding::Valid), Some(3));
        assert_eq!(output_len(8, 3, 2, 1, Padding::Same), Some(4));
        assert_eq!(output_len(8, 3, 3, 1, Padding::Same), Some(3));
        assert_eq!(output_len(7, 3, 2, 1, Padding::Valid), Some(3));
        assert_eq!(output_len(8, 4, 2, 1, Padding::Valid), Some(3));
        assert_eq!(output_len(5, 10, 1, 1, Padding::Valid), None);
        assert_eq!(output_len(5, 3, 0, 1, Padding::Valid), None);
        assert_eq!(output_len(5, 3, 1, 3, Padding::Valid), None);
    }

    #[test]
    fn lc_same_windows_start_at_o_s_minus_half_k() {
        // §3.4: n=8, k=3, s=2 → windows [-1,2), [1,4), [3,6), [5,8): sizes 2,3,3,3.
        let starts: Vec<i64> = (0..4)
            .map(|o| lc_window_start(o, 3, 2, 1, Padding::Same))
            .collect();
        assert_eq!(starts, vec![-1, 1, 3, 5]);
        // Even kernel: the window sits one further left than TF's.
        assert_eq!(lc_window_start(0, 2, 1, 1, Padding::Same), -1);
        assert_eq!(tf_pad_before(8, 2, 1, 1, Padding::Same), 0);
        assert_eq!(tf_pad_before(8, 3, 2, 1, Padding::Same), 0);
        assert_eq!(tf_pad_before(9, 3, 2, 1, Padding::Same), 1);
    }
}
