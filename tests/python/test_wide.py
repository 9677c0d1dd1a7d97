"""The SIMD tier from Python (``wide=``): every choice computes the same bits (the
forward pass, and a training run whose input gradients and kernel gradients run wide at
batch 16), the option survives pickling, and names that are not tiers are refused with a
UsageError."""

from __future__ import annotations

import pathlib
import pickle

import numpy as np
import pytest

import lcjit

WORKLOADS = pathlib.Path(__file__).resolve().parents[1] / "data" / "workloads"
SEED_LC2D = WORKLOADS / "seed_lc2d.json"


def _host_tiers():
    """The tiers this CPU has, found by asking for each."""
    tiers = []
    for t in ("avx2", "avx512"):
        try:
            lcjit.load(SEED_LC2D, wide=t)
            tiers.append(t)
        except lcjit.UsageError:
            pass
    return tiers


def _data(n=32, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 32, 32, 3)).astype(np.float32)
    y = rng.standard_normal((n, 28, 28, 32)).astype(np.float32)
    return x, y


@pytest.mark.parametrize("wide", ["auto", *_host_tiers()])
def test_every_tier_predicts_and_trains_the_same_bits(wide):
    x, y = _data()
    runs = {}
    for w in ("off", wide):
        m = lcjit.load(SEED_LC2D, wide=w, threads=2, seed=3)
        assert m.wide == w
        pred = m.predict(x, batch_size=16)
        m.compile(optimizer="adam", loss="mse")
        h = m.fit(x, y, batch_size=16, epochs=1, verbose=0, seed=1)
        runs[w] = (pred, h.history["loss"], m.get_weights())
    (p0, l0, w0), (p1, l1, w1) = runs["off"], runs[wide]
    assert np.array_equal(p0, p1)
    assert l0 == l1
    assert all(np.array_equal(a, b) for a, b in zip(w0, w1))


def test_default_is_auto_and_bad_names_are_refused():
    assert lcjit.load(SEED_LC2D).wide == "auto"
    with pytest.raises(lcjit.UsageError, match="wide"):
        lcjit.load(SEED_LC2D, wide="sse")


def test_pickling_keeps_the_option():
    m = lcjit.load(SEED_LC2D, wide="off")
    m2 = pickle.loads(pickle.dumps(m))
    assert m2.wide == "off"
