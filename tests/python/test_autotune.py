"""Autotuning from Python (``autotune=``, ``tune_cache=``): a tuned model predicts the
same bits as an untuned one, writes its choices to the cache file, a second model reads
them instead of timing (``lcjit.bench`` reports each layer's candidates and how it was
decided), the option survives pickling, and budgets that are not one are refused with a
UsageError; a cache file that is not one is refused with a FileError naming it."""

from __future__ import annotations

import json
import pathlib
import pickle

import numpy as np
import pytest

import lcjit

WORKLOADS = pathlib.Path(__file__).resolve().parents[1] / "data" / "workloads"
LC2D = WORKLOADS / "lc2d_f12_f6.json"


def _x(n=8, seed=0):
    m = lcjit.load(LC2D)
    shape = m.layers[0].output_shape[1:]
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def test_tuned_predictions_are_the_untuned_bits_and_choices_are_cached(tmp_path):
    x = _x()
    cache = tmp_path / "tune.json"
    plain = lcjit.load(LC2D, threads=2, seed=1).predict(x, batch_size=8)
    m = lcjit.load(LC2D, threads=2, seed=1, autotune=10.0, tune_cache=cache)
    assert m.autotune == 10.0 and m.tune_cache == str(cache)
    assert np.array_equal(m.predict(x, batch_size=8), plain)
    doc = json.loads(cache.read_text())
    assert doc["format"] == "lcjit-tune" and len(doc["entries"]) == 2
    assert all(e["plan"] in e["ms"] for e in doc["entries"])
    again = lcjit.load(LC2D, threads=2, seed=1, autotune=True, tune_cache=cache)
    assert again.autotune == 3.0
    report = lcjit.bench(again, batch=8)
    assert [t["decided"] for t in report["tune"]["layers"]] == ["cached", "cached"]
    assert np.array_equal(again.predict(x, batch_size=8), plain)


def test_off_by_default_and_pickled():
    m = lcjit.load(LC2D)
    assert m.autotune == 0.0 and m.tune_cache is None
    assert lcjit.bench(m, batch=4)["tune"] is None
    t = lcjit.load(LC2D, autotune=2.5, tune_cache="")
    assert t.autotune == 2.5 and t.tune_cache is None
    t2 = pickle.loads(pickle.dumps(t))
    assert t2.autotune == 2.5 and t2.tune_cache is None


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), 1e9])
def test_budgets_that_are_not_one_are_refused(bad):
    with pytest.raises(lcjit.UsageError, match="autotune"):
        lcjit.load(LC2D, autotune=bad)


def test_a_cache_that_is_not_one_is_refused_by_name(tmp_path):
    cache = tmp_path / "tune.json"
    cache.write_text("[1, 2]")
    m = lcjit.load(LC2D, autotune=1.0, tune_cache=cache)
    with pytest.raises(lcjit.FileError, match="tune.json"):
        m.predict(_x(4), batch_size=4)
    assert cache.read_text() == "[1, 2]"
