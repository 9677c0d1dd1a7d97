//! `lc_taps_in_range` (how many taps of an LC window touch the input; it sizes the
//! implementation-3 kernel) in O(1) equals the walk over every tap it replaced, and
//! answers at once for kernels of 2^31 taps (a structural fuzz finding: minutes).

use lcjit::graph::infer::lc_taps_in_range;
use lcjit::graph::Padding;

fn walk(o: usize, n: usize, k: usize, s: usize, d: usize, p: Padding) -> usize {
    let start = lcjit::graph::geometry::lc_window_start(o, k, s, d, p);
    (0..k)
        .filter(|&t| {
            let i = start + (t * d) as i64;
            i >= 0 && (i as usize) < n
        })
        .count()
}

#[test]
fn counts_equal_the_walk_over_every_tap() {
    let mut checked = 0;
    for p in [Padding::Valid, Padding::Same, Padding::Causal] {
        for n in 1..9 {
            for k in 1..8 {
                for s in 1..4 {
                    for d in 1..4 {
                        for o in 0..12 {
                            assert_eq!(
                                lc_taps_in_range(o, n, k, s, d, p),
                                walk(o, n, k, s, d, p),
                                "o {o} n {n} k {k} s {s} d {d} {p:?}"
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    assert_eq!(checked, 3 * 8 * 7 * 3 * 3 * 12);
}

#[test]
fn huge_kernels_count_at_once() {
    let k = 1usize << 31;
    assert_eq!(lc_taps_in_range(0, 4, k, 1, 1, Padding::Valid), 4);
    assert_eq!(lc_taps_in_range(0, 4, k, 1, 1, Padding::Same), 4);
    assert_eq!(lc_taps_in_range(0, 4, k, 1, 3, Padding::Valid), 2);
}
