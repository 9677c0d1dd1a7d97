"""Bad input through the Python API, ported from tests/bad_input.rs: each is one
lcjit.errors class (which also derives from the builtin Python code expects) whose
message names the file, layer and field; never a crash."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import lcjit
from lcjit import errors
from conftest import DATA, GOLDEN

CASE = GOLDEN / "case_0001"


def seed_lc1d():
    return json.loads((DATA / "workloads" / "seed_lc1d.json").read_text())


def layer(v, i):
    return v["config"]["layers"][i]["config"]


def write(tmp_path, name, text):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def check(exc_info, cls, *needles):
    e = exc_info.value
    assert type(e) is cls, f"{type(e).__name__}: {e}"
    assert isinstance(e, lcjit.LcjitError)
    msg = str(e).lower()
    for n in needles:
        assert n.lower() in msg, f"'{e}' does not mention '{n}'"


def test_class_hierarchy():
    assert issubclass(errors.FileError, OSError)
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    assert issubclass(errors.MissingFileError, errors.FileError)
    for cls in (errors.ConfigError, errors.ShapeError, errors.WeightsError, errors.InputError, errors.UsageError):
        assert issubclass(cls, ValueError) and issubclass(cls, lcjit.LcjitError)
    assert issubclass(errors.BudgetError, MemoryError)
    assert issubclass(errors.InternalError, RuntimeError)
    assert lcjit.ConfigError is errors.ConfigError


# ---- malformed JSON (malformed_json_is_rejected) -------------------------------------
@pytest.mark.parametrize(
    "name,text,needles",
    [
        ("empty.json", "", ["json"]),
        ("trunc.json", '{"class_name": "Sequential", "config": {"lay', ["json"]),
        ("garbage.json", "\x01\x02 not json", ["json"]),
        ("array.json", "[1, 2, 3]", ["model"]),
        ("layer.json", '{"class_name": "Dense", "config": {"units": 3}}', ["Dense"]),
        ("deep.json", "[" * 100_000 + "]" * 100_000, []),
    ],
)
def test_malformed_json(tmp_path, name, text, needles):
    p = write(tmp_path, name, text)
    with pytest.raises(errors.ConfigError) as ei:
        lcjit.load(p)
    check(ei, errors.ConfigError, name, *needles)
    with pytest.raises(errors.ConfigError):
        lcjit.Model.from_json(text)


# ---- bad layer fields (bad_layer_configs_name_layer_and_field) ------------------------
def _set(i, key, value):
    def edit(v):
        layer(v, i)[key] = value

    return edit


def _class(v):
    v["config"]["layers"][1]["class_name"] = "Frobnicate"


def _dup(v):
    layer(v, 2)["name"] = layer(v, 1)["name"]


LAYER_CASES = [
    ("unknown_class", _class, errors.ConfigError, ["Frobnicate", "locally_connected1d"]),
    ("zero_filters", _set(1, "filters", 0), errors.ConfigError, ["locally_connected1d", "filters"]),
    ("neg_filters", _set(1, "filters", -4), errors.ConfigError, ["filters", "-4"]),
    ("huge_filters", _set(1, "filters", 10**12), errors.ConfigError, ["filters"]),
    ("big_kernel", _set(1, "kernel_size", [40]), errors.ShapeError, ["locally_connected1d", "kernel 40"]),
    ("zero_stride", _set(1, "strides", [0]), errors.ConfigError, ["strides"]),
    ("bad_padding", _set(1, "padding", "reflect"), errors.ConfigError, ["padding", "reflect"]),
    ("bad_format", _set(1, "data_format", "channels_middle"), errors.ConfigError, ["data_format"]),
    ("bad_activation", _set(1, "activation", "wiggle"), errors.ConfigError, ["activation", "wiggle"]),
    ("bad_impl", _set(1, "implementation", 7), errors.ConfigError, ["implementation"]),
    ("partial_input_shape", _set(0, "batch_input_shape", [None, None, 32]), errors.ConfigError, ["input_1", "batch_input_shape"]),
    ("dup_names", _dup, errors.ShapeError, ["duplicate", "locally_connected1d"]),
]


@pytest.mark.parametrize("name,edit,cls,needles", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_bad_layer_config(tmp_path, name, edit, cls, needles):
    v = seed_lc1d()
    edit(v)
    p = write(tmp_path, f"{name}.json", json.dumps(v))
    with pytest.raises(cls) as ei:
        lcjit.load(p)
    check(ei, cls, f"{name}.json", *needles)


def test_missing_input_shape_is_an_error(tmp_path):
    v = seed_lc1d()
    v["config"]["layers"].pop(0)
    layer(v, 0).pop("batch_input_shape", None)
    p = write(tmp_path, "no_input_shape.json", json.dumps(v))
    with pytest.raises(lcjit.LcjitError) as ei:
        lcjit.load(p)
    assert not isinstance(ei.value, errors.InternalError)
    assert "no_input_shape.json" in str(ei.value)


def test_memory_budget():
    path = DATA / "workloads" / "seed_lc2d.json"
    with pytest.raises(errors.BudgetError) as ei:
        lcjit.load(path, memory_budget=1 << 20)
    check(ei, errors.BudgetError, "seed_lc2d.json", "budget", "locally_connected2d")
    assert isinstance(ei.value, MemoryError)
    assert lcjit.load(path, memory_budget=1 << 30).count_params() > 0


def test_functional_graph_errors(tmp_path):
    base = json.loads((GOLDEN / "model_gpnet_like" / "model.json").read_text())
    unknown = copy.deepcopy(base)
    unknown["config"]["layers"][1]["inbound_nodes"] = [[["no_such_layer", 0, 0, {}]]]
    with pytest.raises(errors.ShapeError) as ei:
        lcjit.load(write(tmp_path, "unknown_inbound.json", json.dumps(unknown)))
    check(ei, errors.ShapeError, "unknown_inbound.json", "no_such_layer")
    cycle = copy.deepcopy(base)
    second = cycle["config"]["layers"][2]["name"]
    cycle["config"]["layers"][1]["inbound_nodes"] = [[[second, 0, 0, {}]]]
    with pytest.raises(errors.ShapeError) as ei:
        lcjit.load(write(tmp_path, "cycle.json", json.dumps(cycle)))
    check(ei, errors.ShapeError, "cycle.json", "cycle")


# ---- weights (weight_file_errors) ----------------------------------------------------
@pytest.fixture
def entries():
    with np.load(CASE / "weights.npz") as f:
        return {k: f[k] for k in f.files}


def test_missing_weight(tmp_path, entries):
    first = next(iter(entries))
    lname, wname = first.split("/")
    p = tmp_path / "missing.npz"
    np.savez(p, **{k: v for k, v in entries.items() if k != first})
    with pytest.raises(errors.WeightsError) as ei:
        lcjit.load(CASE / "model.json", p)
    check(ei, errors.WeightsError, "missing.npz", lname, wname, "missing")
    m = lcjit.load(CASE / "model.json")
    with pytest.raises(errors.WeightsError):
        m.load_weights(p)


def test_surplus_weight(tmp_path, entries):
    first = next(iter(entries))
    lname = first.split("/")[0]
    p = tmp_path / "extra.npz"
    np.savez(p, **entries, **{f"{lname}/surplus": entries[first]})
    with pytest.raises(errors.WeightsError) as ei:
        lcjit.load(CASE / "model.json", p)
    check(ei, errors.WeightsError, "extra.npz", lname)


def test_weight_of_the_wrong_shape(tmp_path, entries):
    first = next(iter(entries))
    lname, wname = first.split("/")
    p = tmp_path / "wrong.npz"
    np.savez(p, **{**entries, first: np.zeros((3, 1), np.float32)})
    with pytest.raises(errors.WeightsError) as ei:
        lcjit.load(CASE / "model.json", p)
    check(ei, errors.WeightsError, "wrong.npz", lname, wname, "shape")


def test_set_weights_errors(entries):
    m = lcjit.load(CASE / "model.h5")
    ws = m.get_weights()
    before = m.predict(np.load(CASE / "x.npy"))
    with pytest.raises(errors.UsageError) as ei:
        m.set_weights(ws[:-1])
    check(ei, errors.UsageError, "set_weights", str(len(ws)))
    with pytest.raises(errors.WeightsError) as ei:
        m.set_weights([np.zeros((2, 2), np.float32)] + ws[1:])
    first = next(iter(entries))
    check(ei, errors.WeightsError, *first.split("/"), "shape")
    with pytest.raises(errors.WeightsError):
        m.layers[1].set_weights([np.zeros((2, 2), np.float32), ws[1]])
    # A refused set_weights changes nothing.
    assert np.array_equal(m.predict(np.load(CASE / "x.npy")), before)


# ---- corrupt and missing files (corrupt_and_missing_files) ---------------------------
def _half(src, tmp_path, name):
    b = src.read_bytes()
    return write(tmp_path, name, b[: len(b) // 2])


def test_truncated_npz(tmp_path):
    p = _half(CASE / "weights.npz", tmp_path, "w.npz")
    with pytest.raises(errors.FileError) as ei:
        lcjit.load(CASE / "model.json", p)
    check(ei, errors.FileError, "w.npz")


def test_truncated_h5(tmp_path):
    p = _half(CASE / "model.h5", tmp_path, "m.h5")
    with pytest.raises(errors.FileError) as ei:
        lcjit.load(p)
    check(ei, errors.FileError, "m.h5", "hdf5")
    assert isinstance(ei.value, OSError)


@pytest.mark.parametrize(
    "name,data",
    [("g.keras", b"PK\x03\x04 this is not a zip"), ("g.h5", b"\x89HDF\r\n\x1a\n garbage")],
)
def test_garbage_files(tmp_path, name, data):
    with pytest.raises(errors.FileError) as ei:
        lcjit.load(write(tmp_path, name, data))
    check(ei, errors.FileError, name)


def test_missing_files():
    with pytest.raises(errors.MissingFileError) as ei:
        lcjit.load("/no/such/model.json")
    check(ei, errors.MissingFileError, "/no/such/model.json")
    assert isinstance(ei.value, FileNotFoundError)
    m = lcjit.load(CASE / "model.h5")
    with pytest.raises(FileNotFoundError) as ei:
        m.load_weights("/no/such/w.npz")
    check(ei, errors.MissingFileError, "/no/such/w.npz")
    with pytest.raises(errors.MissingFileError):
        m.save("/no/such/dir/m.h5")


def test_unsupported_extensions(tmp_path):
    with pytest.raises(errors.FileError) as ei:
        lcjit.load(write(tmp_path, "model.txt", "{}"))
    check(ei, errors.FileError, "model.txt", "unsupported")
    m = lcjit.load(CASE / "model.h5")
    with pytest.raises(errors.FileError) as ei:
        m.save(tmp_path / "m.txt")
    check(ei, errors.FileError, "m.txt")
    assert not (tmp_path / "m.txt").exists()


def test_save_without_overwrite(tmp_path):
    m = lcjit.load(CASE / "model.h5")
    p = tmp_path / "m.h5"
    m.save(p)
    with pytest.raises(errors.FileError) as ei:
        m.save(p, overwrite=False)
    check(ei, errors.FileError, "m.h5", "exists")
    with pytest.raises(errors.FileError):
        m.save_weights(p, overwrite=False)


# ---- inputs (inputs_of_the_wrong_shape_or_rank) --------------------------------------
def test_inputs_of_the_wrong_rank_or_size():
    m = lcjit.load(CASE / "model.h5")
    x = np.load(CASE / "x.npy")
    with pytest.raises(errors.InputError) as ei:
        m.predict(x.reshape(-1))
    check(ei, errors.InputError, "input", "shape")
    shape = list(x.shape)
    shape[-1] += 1
    with pytest.raises(errors.InputError) as ei:
        m.predict(np.zeros(shape, np.float32))
    check(ei, errors.InputError, "input", "shape", str(shape[-1]))
    with pytest.raises(errors.InputError) as ei:
        m.predict(np.array([["a"]]))
    check(ei, errors.InputError, "float32")
    with pytest.raises(errors.InputError) as ei:
        m.gradients(x, np.zeros((1, 1), np.float32))
    check(ei, errors.InputError, "cotangent", "shape")


def test_usage_errors():
    with pytest.raises(errors.UsageError) as ei:
        lcjit.load(CASE / "model.h5", threads=0)
    check(ei, errors.UsageError, "threads")
    with pytest.raises(errors.UsageError) as ei:
        lcjit.load(CASE / "model.h5", engine="gpu")
    check(ei, errors.UsageError, "engine", "gpu")
    m = lcjit.load(CASE / "model.h5")
    x = np.load(CASE / "x.npy")
    with pytest.raises(errors.UsageError) as ei:
        m.predict(x, batch_size=0)
    check(ei, errors.UsageError, "batch_size")
    with pytest.raises(errors.UsageError) as ei:
        m.predict(x, output="nope")
    check(ei, errors.UsageError, "nope", "locally_connected1d")
    with pytest.raises(errors.UsageError) as ei:
        m.get_layer("nope")
    check(ei, errors.UsageError, "nope")
    with pytest.raises(errors.UsageError):
        m.get_layer(index=99)
    with pytest.raises(errors.UsageError) as ei:
        lcjit.ir(m, stage="nope")
    check(ei, errors.UsageError, "stage", "nope")


def test_training_errors():
    m = lcjit.load(CASE / "model.h5")
    x = np.load(CASE / "x.npy")
    y = m.predict(x)
    with pytest.raises(errors.UsageError) as ei:
        m.fit(x, y, verbose=0)
    check(ei, errors.UsageError, "compile")
    with pytest.raises(errors.UsageError) as ei:
        m.compile("adam")
    check(ei, errors.UsageError, "loss")
    with pytest.raises(errors.ConfigError) as ei:
        m.compile("adam", loss="frob")
    check(ei, errors.ConfigError, "loss", "frob")
    with pytest.raises(errors.ConfigError) as ei:
        m.compile("adam", loss="mse", metrics=["nope"])
    check(ei, errors.ConfigError, "metric", "nope")
    with pytest.raises(errors.ConfigError) as ei:
        m.compile("frobopt", loss="mse")
    check(ei, errors.ConfigError, "optimizer")
    with pytest.raises(errors.UsageError):
        m.compile("adam", loss="mse", run_eagerly=True)
    m.compile("adam", loss="mse")
    w0 = m.get_weights()
    with pytest.raises(errors.UsageError) as ei:
        m.fit(x, y[:1], verbose=0)
    check(ei, errors.UsageError, "samples")
    with pytest.raises(errors.InputError) as ei:
        m.fit(x, np.zeros((len(x), 99), np.float32), verbose=0)
    check(ei, errors.InputError, "shape", "99")
    with pytest.raises(errors.UsageError) as ei:
        m.fit(x, y, validation_split=1.5, verbose=0)
    check(ei, errors.UsageError, "validation split", "1.5")
    with pytest.raises(errors.UsageError) as ei:
        m.evaluate(x, np.zeros((len(x) + 1,) + y.shape[1:], np.float32))
    check(ei, errors.UsageError, "samples")
    with pytest.raises(errors.UsageError) as ei:
        m.fit(x, y, verbose=0, callbacks=[lcjit.callbacks.EarlyStopping(mode="sideways")])
    check(ei, errors.UsageError, "EarlyStopping", "mode")
    with pytest.raises(errors.UsageError) as ei:
        m.fit(x, y, verbose=0, callbacks=[lcjit.callbacks.ReduceLROnPlateau(factor=2)])
    check(ei, errors.UsageError, "ReduceLROnPlateau", "factor")
    # Nothing was trained by the refused calls.
    assert all(np.array_equal(a, b) for a, b in zip(m.get_weights(), w0))


def test_fit_sample_count_message_is_plain():
    m = lcjit.load(CASE / "model.h5")
    m.compile("adam", loss="mse")
    x = np.load(CASE / "x.npy")
    with pytest.raises(errors.UsageError) as ei:
        m.fit(x, m.predict(x)[:1], verbose=0)
    assert "Some(" not in str(ei.value)


ODD = [None, -1, 0, 1, 2.5, 1e300, 10**12, "x", "same", [], [1, 2, 3, 4, 5], [[1, 2], [3]], {}, {"class_name": "X"}, True]


def test_mutated_configs_never_crash(tmp_path):
    """A slice of tests/frontend_mutations.rs: every field of the first layers of a few
    golden configs set to odd values loads or fails with a user error, never internal."""
    files = [GOLDEN / c / "model.json" for c in ("case_0001", "model_gpnet_like", "model_mini_jet")]
    tried = 0
    for f in files:
        base = json.loads(f.read_text())
        layers = base["config"]["layers"]
        for li in range(min(3, len(layers))):
            for key in list(layers[li]["config"]):
                for odd in ODD:
                    v = copy.deepcopy(base)
                    v["config"]["layers"][li]["config"][key] = odd
                    try:
                        lcjit.Model.from_json(json.dumps(v))
                    except errors.InternalError as e:  # pragma: no cover - a bug
                        pytest.fail(f"{f.parent.name} layer {li} {key}={odd!r}: internal: {e}")
                    except lcjit.LcjitError:
                        pass
                    tried += 1
    assert tried > 300
