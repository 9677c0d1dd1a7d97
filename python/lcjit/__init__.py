"""lcjit: Keras models with LocallyConnected1D/2D layers, compiled to native code.

Load a tf-keras / Keras 2 / Keras 1 model file, then predict, train, evaluate and save
with calls that read like Keras's, on lcjit's Cranelift-compiled programs::

    import lcjit
    model = lcjit.load("deepface.h5")
    model.summary()
    emb = model.predict(faces, output="F7")          # inner-layer outputs by name
    model.compile(optimizer="adam", loss="mse")
    history = model.fit(x, y, epochs=3, validation_split=0.2,
                        callbacks=[lcjit.callbacks.EarlyStopping(patience=2)])
    model.save("trained.h5")                         # tf-keras loads it

Arrays are numpy float32 (C-contiguous float32 input is used without a copy). Native
work releases the GIL. Errors are :mod:`lcjit.errors` classes whose message names the
file, layer and field.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import callbacks, errors
from ._native import NativeModel as _NativeModel
from ._native import __version__
from ._native import bench_json as _bench_json
from ._native import epoch_orders
from ._native import ir_text as _ir_text
from .errors import (
    BudgetError,
    ConfigError,
    FileError,
    InputError,
    InternalError,
    LcjitError,
    MissingFileError,
    ShapeError,
    UsageError,
    WeightsError,
)

__all__ = [
    "Model",
    "Layer",
    "History",
    "load",
    "ir",
    "bench",
    "callbacks",
    "errors",
    "epoch_orders",
    "LcjitError",
    "FileError",
    "MissingFileError",
    "ConfigError",
    "ShapeError",
    "BudgetError",
    "WeightsError",
    "InputError",
    "UsageError",
    "InternalError",
    "__version__",
]

PathLike = Union[str, "os.PathLike[str]"]

# Keras's optimizer names (`keras.optimizers.get`) and the class each stands for.
_OPTIMIZERS = {
    "sgd": "SGD",
    "adam": "Adam",
    "adamw": "AdamW",
    "adamax": "Adamax",
    "nadam": "Nadam",
    "rmsprop": "RMSprop",
    "adagrad": "Adagrad",
    "adadelta": "Adadelta",
    "ftrl": "Ftrl",
}


def _optimizer_config(optimizer: Any) -> Any:
    """A Keras-serialized optimizer from a name, a dict or an object with ``get_config``."""
    if isinstance(optimizer, str):
        cls = _OPTIMIZERS.get(optimizer.lower())
        return {"class_name": cls, "config": {}} if cls else optimizer
    if isinstance(optimizer, dict):
        return optimizer
    if hasattr(optimizer, "get_config"):
        return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}
    raise TypeError(f"optimizer must be a name, a Keras config dict or an optimizer, not {optimizer!r}")


def _serializable(value: Any, what: str) -> Any:
    """Names and dicts pass; callables and Keras objects with ``get_config`` are named."""
    if value is None or isinstance(value, (str, dict, list, tuple)):
        return value
    if hasattr(value, "get_config"):
        return {"class_name": type(value).__name__, "config": value.get_config()}
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    raise TypeError(f"{what} must be a Keras name or config dict, not {value!r}")


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _write_stdout(text: str) -> None:
    """Where ``fit``'s progress display goes (looked up per call: redirections work)."""
    sys.stdout.write(text)
    sys.stdout.flush()


class History:
    """What :meth:`Model.fit` returns, as ``keras.callbacks.History``: ``history`` maps
    each logged key (``loss``, metrics, ``val_*``, ``lr``) to its value per epoch."""

    def __init__(
        self,
        history: Dict[str, List[float]],
        epoch: List[int],
        params: Dict[str, Any],
        model: "Model",
        warnings: List[str],
        stopped: Optional[str],
    ) -> None:
        self.history = history
        self.epoch = epoch
        self.params = params
        self.model = model
        #: Warnings callbacks reported (e.g. a monitored key that was never logged).
        self.warnings = warnings
        #: Why training stopped early (EarlyStopping, TerminateOnNaN, stop_training), if it did.
        self.stopped = stopped

    def __repr__(self) -> str:
        return f"History(epochs={len(self.epoch)}, keys={list(self.history)})"


class Layer:
    """One layer of a :class:`Model` (a view: weights are read from the model)."""

    def __init__(
        self,
        model: "Model",
        name: str,
        class_name: str,
        output_shape: Tuple[Optional[int], ...],
        trainable: bool,
        weight_names: List[str],
        params: int,
    ) -> None:
        self._model = model
        self.name = name
        self.class_name = class_name
        self.output_shape = output_shape
        self.trainable = trainable
        #: The layer's weight names, as Keras's (``kernel``, ``bias``, ``gamma``...).
        self.weight_names = weight_names
        self._params = params

    def count_params(self) -> int:
        """Number of scalars in the layer's weights (Keras file layout)."""
        return self._params

    def get_weights(self) -> List[np.ndarray]:
        """The layer's weights in Keras layout."""
        return self._model._native_get_weights(self.name)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replaces the layer's weights (Keras layout, shapes as ``get_weights``)."""
        self._model._native_set_weights(list(weights), self.name)

    @property
    def weights(self) -> List[np.ndarray]:
        """Same as :meth:`get_weights`."""
        return self.get_weights()

    def __repr__(self) -> str:
        return f"<lcjit.Layer {self.name} ({self.class_name}) output {self.output_shape}>"


class Model(_NativeModel):
    """A Keras model loaded by lcjit (see :func:`load`).

    ``engine`` is ``"jit"`` (native code, the default), ``"interp"`` (the checked loop-IR
    interpreter) or ``"reference"`` (the naive oracle); ``threads`` defaults to every
    core; ``memory_budget`` (bytes) refuses files, models and runs that would need more
    (default: three quarters of the available memory, at most half the address-space
    limit; the same default as the command line's ``--memory-budget``).
    ``weights_dtype`` ``"bf16"`` or ``"f16"`` stores the kernels of locally connected and
    Dense layers in 16 bits for prediction (rounded to nearest even, widened in registers:
    batch-1 inference streams half the bytes); training needs the default ``"f32"``.
    ``wide`` is the SIMD tier past 128-bit vectors the compiled programs may use for
    their compute-bound register tiles: ``"auto"`` (the widest this CPU has, the
    default), ``"off"``, ``"avx2"`` or ``"avx512"`` (refused on a CPU without it); every
    choice computes the same bits.
    ``autotune`` (seconds, or ``True`` for 3) times the candidate schedules of each
    locally connected layer's forward pass on this machine when a batch size is first
    compiled, within that budget, and keeps the fastest (the same bits either way);
    choices are cached by layer shape, CPU and threads in ``tune_cache`` (default:
    ``$LCJIT_TUNE_CACHE``, else ``~/.cache/lcjit/tune.json``; ``""``: no file).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The native constructor has read the model; Keras's flag for callbacks:
        self.stop_training = False

    # ---- construction ----------------------------------------------------------------
    @classmethod
    def from_json(
        cls,
        text: str,
        *,
        engine: str = "jit",
        threads: Optional[int] = None,
        memory_budget: Optional[int] = None,
        seed: int = 0,
        weights_dtype: str = "f32",
        wide: str = "auto",
        autotune: Union[bool, float] = False,
        tune_cache: Optional[str] = None,
    ) -> "Model":
        """A model from its JSON configuration (``model.to_json()`` of any dialect),
        weights drawn from its initializers with ``seed``."""
        return cls(
            text,
            kind="json",
            engine=engine,
            threads=threads,
            memory_budget=memory_budget,
            seed=seed,
            weights_dtype=weights_dtype,
            wide=wide,
            autotune=autotune,
            tune_cache=tune_cache,
        )

    # ---- structure -------------------------------------------------------------------
    @property
    def layers(self) -> List[Layer]:
        """The layers, in order (the input layer first)."""
        return [
            Layer(self, n, c, (None, *shape), t, w, p)
            for (n, c, shape, t, w, p) in self.layer_info()
        ]

    def get_layer(self, name: Optional[str] = None, index: Optional[int] = None) -> Layer:
        """The layer called ``name`` (or at ``index``), as Keras's ``get_layer``."""
        layers = self.layers
        if index is not None:
            if not -len(layers) <= index < len(layers):
                raise UsageError(f"get_layer: index {index} out of range ({len(layers)} layers)")
            return layers[index]
        for layer in layers:
            if layer.name == name:
                return layer
        raise UsageError(
            f"no layer named '{name}' (layers: {', '.join(l.name for l in layers)})"
        )

    @property
    def input_shape(self) -> Any:
        """``(None, *shape)`` of the input (a list for several inputs), as Keras's."""
        shapes = [(None, *s) for s in self.input_shapes]
        return shapes[0] if len(shapes) == 1 else shapes

    @property
    def output_shape(self) -> Any:
        """``(None, *shape)`` of the output (a list for several outputs), as Keras's."""
        shapes = [(None, *s) for s in self.output_shapes]
        return shapes[0] if len(shapes) == 1 else shapes

    def count_params(self) -> int:
        """Number of scalars in every weight (Keras file layout)."""
        return sum(layer.count_params() for layer in self.layers)

    def summary(self, line_length: Optional[int] = None, print_fn: Optional[Callable[..., Any]] = None) -> None:
        """Prints Keras's summary table; ``print_fn`` receives each line instead."""
        del line_length  # the table is as wide as its columns
        for line in self.summary_text().rstrip("\n").split("\n"):
            (print_fn or print)(line)

    # ---- weights ---------------------------------------------------------------------
    def _native_get_weights(self, layer: Optional[str] = None) -> List[np.ndarray]:
        return _NativeModel.get_weights(self, layer)

    def _native_set_weights(self, weights: List[Any], layer: Optional[str] = None) -> None:
        _NativeModel.set_weights(self, weights, layer)

    def get_weights(self) -> List[np.ndarray]:  # type: ignore[override]
        """Every weight in Keras layout, in Keras's ``model.get_weights()`` order."""
        return self._native_get_weights(None)

    def set_weights(self, weights: Sequence[Any]) -> None:  # type: ignore[override]
        """Replaces every weight (Keras layout, ``get_weights`` order and shapes)."""
        self._native_set_weights(list(weights), None)

    @property
    def weights(self) -> List[np.ndarray]:
        """Same as :meth:`get_weights`."""
        return self.get_weights()

    def save(self, filepath: PathLike, overwrite: bool = True) -> None:  # type: ignore[override]
        """Saves the model: ``.h5`` (legacy full model), ``.keras`` (tf-keras archive) or
        ``.npz`` (weights); written to a temporary name, then renamed."""
        if not overwrite and os.path.exists(filepath):
            raise FileError(f"{os.fspath(filepath)}: exists and overwrite=False")
        _NativeModel.save(self, os.fspath(filepath))

    def save_weights(self, filepath: PathLike, overwrite: bool = True) -> None:  # type: ignore[override]
        """Saves the weights: ``.h5`` (as Keras's ``save_weights``) or ``.npz``."""
        if not overwrite and os.path.exists(filepath):
            raise FileError(f"{os.fspath(filepath)}: exists and overwrite=False")
        _NativeModel.save_weights(self, os.fspath(filepath))

    def load_weights(self, filepath: PathLike) -> None:  # type: ignore[override]
        """Replaces every weight from a ``.h5`` (full model or weights) or ``.npz`` file."""
        _NativeModel.load_weights(self, os.fspath(filepath))

    # ---- inference -------------------------------------------------------------------
    def predict(
        self,
        x: Any,
        batch_size: Optional[int] = 32,
        verbose: Any = "auto",
        output: Union[None, str, Sequence[str]] = None,
    ) -> Any:
        """Keras's ``predict``: every sample of ``x``, ``batch_size`` at a time.

        ``output`` names a layer (or a list of layers) whose outputs to return instead of
        the model's, as ``keras.Model(model.inputs, layer.output).predict(x)``; layers
        after them are not computed. Returns float32 arrays (a list for several).
        """
        del verbose  # no progress bar for prediction
        names: List[str] = [] if output is None else [output] if isinstance(output, str) else list(output)
        outs = self.predict_outputs(x, 32 if batch_size is None else int(batch_size), names)
        if output is None:
            arrays = [a for _, a in outs]
        else:
            by_name = dict(outs)
            arrays = [by_name[n] for n in names]
        if isinstance(output, str) or (output is None and len(arrays) == 1):
            return arrays[0]
        return arrays

    def __call__(self, x: Any) -> Any:
        """``model(x)``: the outputs for one batch."""
        return self.predict(x, batch_size=max(1, len(x) if hasattr(x, "__len__") else 1))

    def gradients(self, x: Any, dy: Any) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:  # type: ignore[override]
        """Gradient of ``sum(y * dy)`` in inference mode: ``(dx, {"layer/weight": grad})``
        with every trainable weight's gradient in Keras layout."""
        dx, grads = _NativeModel.gradients(self, x, dy)
        return dx, dict(grads)

    # ---- training --------------------------------------------------------------------
    def compile(
        self,
        optimizer: Any = "rmsprop",
        loss: Any = None,
        metrics: Optional[Iterable[Any]] = None,
        **kwargs: Any,
    ) -> None:
        """Keras's ``compile``: optimizer, loss and metrics by Keras name or serialized
        config (``{"class_name": "Adam", "config": {"learning_rate": 1e-3}}``). The
        optimizer's state starts fresh. Unsupported Keras arguments are refused."""
        unsupported = {k: v for k, v in kwargs.items() if v not in (None, False)}
        if unsupported:
            raise UsageError(f"compile: unsupported arguments {sorted(unsupported)}")
        if loss is None:
            raise UsageError("compile: a loss is required for training")
        m = None if metrics is None else json.dumps([_serializable(v, "metric") for v in metrics])
        self.compile_json(
            json.dumps(_optimizer_config(optimizer)), json.dumps(_serializable(loss, "loss")), m
        )

    def fit(
        self,
        x: Any,
        y: Any,
        batch_size: Optional[int] = 32,
        epochs: int = 1,
        verbose: Any = "auto",
        callbacks: Optional[Sequence[Any]] = None,
        validation_split: float = 0.0,
        validation_data: Optional[Tuple[Any, ...]] = None,
        shuffle: bool = True,
        seed: Optional[int] = None,
    ) -> History:
        """Keras's ``fit``: trains in place on lcjit's compiled gradient program and
        returns a :class:`History`. The optimizer and loss are the ones given to
        :meth:`compile`, else the model file's ``training_config``. ``verbose``: 0 silent,
        1 a progress bar (``"auto"``), 2 one line per epoch. Ctrl-C stops between batches
        with ``KeyboardInterrupt``, keeping the weights of the last finished step.
        ``seed`` fixes the shuffling and Dropout masks (``None``: a new seed per call)."""
        level = 1 if verbose == "auto" else int(verbose)
        vd = None
        if validation_data is not None:
            if len(validation_data) not in (2, 3):
                raise UsageError("validation_data must be (x, y) or (x, y, sample_weight)")
            if len(validation_data) == 3 and validation_data[2] is not None:
                raise UsageError("validation_data: sample weights are not supported")
            vd = (validation_data[0], validation_data[1])
        self.stop_training = False
        # Progress goes to sys.stdout as Keras prints it (a notebook shows it); a bar
        # redrawn in place on a console or in a notebook, one line per epoch otherwise.
        dynamic = level == 1 and (_isatty(sys.stdout) or "ipykernel" in sys.modules)
        items, epoch, warnings, stopped = self.fit_native(
            self,
            x,
            y,
            32 if batch_size is None else int(batch_size),
            int(epochs),
            level,
            list(callbacks or []),
            float(validation_split),
            vd,
            bool(shuffle),
            None if seed is None else int(seed),
            (_write_stdout, dynamic),
        )
        n = len(x) if hasattr(x, "__len__") else 0
        bs = 32 if batch_size is None else int(batch_size)
        params = {"verbose": level, "epochs": int(epochs), "steps": -(-n // bs) if n else None}
        return History(dict(items), list(epoch), params, self, list(warnings), stopped)

    def evaluate(
        self,
        x: Any,
        y: Any,
        batch_size: Optional[int] = 32,
        verbose: Any = "auto",
        return_dict: bool = False,
    ) -> Any:
        """Keras's ``evaluate``: the loss (with regularization), then each compiled metric;
        a scalar without metrics, a list with them, a dict with ``return_dict=True``."""
        del verbose
        logs = self.evaluate_native(x, y, 32 if batch_size is None else int(batch_size))
        if return_dict:
            return dict(logs)
        values = [v for _, v in logs]
        return values[0] if len(values) == 1 else values

    def compute_gradients(self, x: Any, y: Any) -> Tuple[float, Dict[str, np.ndarray]]:  # type: ignore[override]
        """One training step's loss (with regularization) and the gradient of every
        trainable weight (``{"layer/weight": grad}``, Keras layout), at the current
        weights, as ``fit`` computes them — for custom and data-parallel loops."""
        loss, grads = _NativeModel.compute_gradients(self, x, y)
        return loss, dict(grads)

    def apply_gradients(self, grads: Dict[str, Any]) -> None:  # type: ignore[override]
        """The optimizer update with ``grads`` (as :meth:`compute_gradients` returns
        them, or averaged over workers), then constraints and BatchNorm statistics."""
        _NativeModel.apply_gradients(self, list(grads.items()))

    def train_step(self, x: Any, y: Any) -> Dict[str, float]:
        """One step of ``fit`` on the batch ``(x, y)``; returns ``{"loss": value}``."""
        loss, grads = self.compute_gradients(x, y)
        self.apply_gradients(grads)
        return {"loss": loss}

    # ---- pickling --------------------------------------------------------------------
    def __reduce__(self) -> Any:
        state = {
            "config": self.to_json(),
            "weights": self.get_weights(),
            "engine": self.engine,
            "threads": self.threads,
            "memory_budget": self.memory_budget,
            "weights_dtype": self.weights_dtype,
            "wide": self.wide,
            "autotune": self.autotune,
            # None would mean the default file: "" is none.
            "tune_cache": "" if self.tune_cache is None else self.tune_cache,
            "training_config": self.training_config_json(),
        }
        return (_restore, (type(self), state))

    def __repr__(self) -> str:
        return f"<lcjit.Model '{self.name}' engine={self.engine} threads={self.threads}>"


def _restore(cls: type, state: Dict[str, Any]) -> Model:
    """Unpickles a :class:`Model` (configuration, weights, training configuration; the
    optimizer's slots start fresh)."""
    m = cls(
        state["config"],
        kind="json",
        engine=state["engine"],
        threads=state["threads"],
        memory_budget=state["memory_budget"],
        weights_dtype=state.get("weights_dtype", "f32"),
        wide=state.get("wide", "auto"),
        autotune=state.get("autotune", 0.0),
        tune_cache=state.get("tune_cache"),
    )
    m.set_weights(state["weights"])
    tc = state.get("training_config")
    if tc:
        cfg = json.loads(tc)
        m.compile_json(
            json.dumps(cfg.get("optimizer_config", cfg.get("optimizer"))),
            json.dumps(cfg["loss"]),
            json.dumps(cfg["metrics"]) if cfg.get("metrics") is not None else None,
        )
    return m


def load(
    path: PathLike,
    weights: Optional[PathLike] = None,
    *,
    engine: str = "jit",
    threads: Optional[int] = None,
    memory_budget: Optional[int] = None,
    seed: int = 0,
    weights_dtype: str = "f32",
    wide: str = "auto",
    autotune: Union[bool, float] = False,
    tune_cache: Optional[PathLike] = None,
) -> Model:
    """Loads a model from ``.h5`` (legacy full model), ``.keras`` or ``.json`` (tf-keras,
    Keras 2 or Keras 1 dialect); ``weights`` (``.h5`` or ``.npz``) replaces its weights.
    A file without weights is initialized from its layers' initializers with ``seed``.
    ``weights_dtype``, ``wide``, ``autotune`` and ``tune_cache`` are as for
    :class:`Model`."""
    return Model(
        os.fspath(path),
        kind="path",
        weights=None if weights is None else os.fspath(weights),
        engine=engine,
        threads=threads,
        memory_budget=memory_budget,
        seed=seed,
        weights_dtype=weights_dtype,
        wide=wide,
        autotune=autotune,
        tune_cache=None if tune_cache is None else os.fspath(tune_cache),
    )


def ir(model: Model, stage: str = "loops", batch: int = 1, backward: bool = False) -> str:
    """The model as ``lcjit ir`` prints it: ``stage`` is ``graph``, ``dot``, ``svg``,
    ``loops`` (the loop IR), ``clif`` or ``asm``; ``backward`` for the gradient program."""
    return _ir_text(model, stage, batch, backward)


def bench(
    model: Model,
    batch: int = 32,
    threads: Optional[int] = None,
    engines: Sequence[str] = ("jit",),
    train: bool = False,
    probe: bool = False,
) -> Dict[str, Any]:
    """``lcjit bench`` on ``model``: median forward (and with ``train`` training-step)
    times per engine, compile times, flops, and with ``probe`` the measured roofline.
    The forward pass stores weights as the model's ``weights_dtype`` says."""
    return json.loads(_bench_json(model, batch, threads, list(engines), train, probe))
