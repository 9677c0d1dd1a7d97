"""Keras callbacks for :meth:`lcjit.Model.fit`.

The built-ins (``EarlyStopping``, ``ModelCheckpoint``, ``ReduceLROnPlateau``,
``CSVLogger``, ``TerminateOnNaN``, ``LearningRateScheduler``) take tf-keras 2.21's
arguments and defaults and run natively inside ``fit`` (lcjit's own implementations of
tf-keras's ``callbacks.py``), so they cost nothing per batch. :class:`Callback` and
:class:`LambdaCallback` run Python code; so does any object with Keras's callback methods
(``on_epoch_end(epoch, logs)``, ``on_train_batch_end(batch, logs)``, ...). Setting
``self.model.stop_training = True`` in a callback stops training as in Keras.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = [
    "Callback",
    "LambdaCallback",
    "EarlyStopping",
    "ModelCheckpoint",
    "ReduceLROnPlateau",
    "CSVLogger",
    "TerminateOnNaN",
    "LearningRateScheduler",
]

Logs = Optional[Dict[str, float]]


class Callback:
    """Base class of Python callbacks, as ``keras.callbacks.Callback``: override the hooks
    you need; ``self.model`` is the model being trained, ``self.params`` holds
    ``epochs``, ``steps`` and ``verbose``."""

    def __init__(self) -> None:
        self.model: Any = None
        self.params: Dict[str, Any] = {}

    def set_model(self, model: Any) -> None:
        """Called by ``fit`` before training with the model."""
        self.model = model

    def set_params(self, params: Dict[str, Any]) -> None:
        """Called by ``fit`` before training with ``epochs``, ``steps`` and ``verbose``."""
        self.params = params

    def on_train_begin(self, logs: Logs = None) -> None:
        """Before the first epoch."""

    def on_train_end(self, logs: Logs = None) -> None:
        """After the last epoch, with the last epoch's logs."""

    def on_epoch_begin(self, epoch: int, logs: Logs = None) -> None:
        """At the start of ``epoch`` (0-based)."""

    def on_epoch_end(self, epoch: int, logs: Logs = None) -> None:
        """After ``epoch`` and its validation; keys added to ``logs`` reach the history."""

    def on_train_batch_begin(self, batch: int, logs: Logs = None) -> None:
        """Before ``batch``; calls :meth:`on_batch_begin`, as Keras does."""
        self.on_batch_begin(batch, logs=logs)

    def on_train_batch_end(self, batch: int, logs: Logs = None) -> None:
        """After ``batch`` updated the weights; calls :meth:`on_batch_end`, as Keras does."""
        self.on_batch_end(batch, logs=logs)

    def on_batch_begin(self, batch: int, logs: Logs = None) -> None:
        """Keras's older name of :meth:`on_train_batch_begin`."""

    def on_batch_end(self, batch: int, logs: Logs = None) -> None:
        """Keras's older name of :meth:`on_train_batch_end`."""


class LambdaCallback(Callback):
    """A callback from plain functions, as ``keras.callbacks.LambdaCallback``."""

    def __init__(
        self,
        on_epoch_begin: Optional[Callable[..., None]] = None,
        on_epoch_end: Optional[Callable[..., None]] = None,
        on_batch_begin: Optional[Callable[..., None]] = None,
        on_batch_end: Optional[Callable[..., None]] = None,
        on_train_begin: Optional[Callable[..., None]] = None,
        on_train_end: Optional[Callable[..., None]] = None,
        **kwargs: Callable[..., None],
    ) -> None:
        super().__init__()
        for name, fn in [
            ("on_epoch_begin", on_epoch_begin),
            ("on_epoch_end", on_epoch_end),
            ("on_batch_begin", on_batch_begin),
            ("on_batch_end", on_batch_end),
            ("on_train_begin", on_train_begin),
            ("on_train_end", on_train_end),
            *kwargs.items(),
        ]:
            if fn is not None:
                setattr(self, name, fn)


_HOOKS = (
    "on_train_begin",
    "on_train_end",
    "on_epoch_begin",
    "on_epoch_end",
    "on_train_batch_begin",
    "on_train_batch_end",
    "on_batch_begin",
    "on_batch_end",
)
_ALIASES = {"on_train_batch_begin": "on_batch_begin", "on_train_batch_end": "on_batch_end"}


def _overrides(obj: Any, name: str) -> bool:
    """Whether ``obj`` has its own ``name`` rather than :class:`Callback`'s no-op."""
    return name in vars(obj) or getattr(type(obj), name, None) is not getattr(Callback, name)


def _active_hooks(obj: Any) -> List[str]:
    """The hook methods of ``obj`` that do something (``fit`` calls only those, so a
    callback without batch hooks costs nothing per batch): every callable hook of a
    plain object; a :class:`Callback`'s overridden ones, with ``on_train_batch_*``
    active when their ``on_batch_*`` alias is overridden."""
    out = []
    for name in _HOOKS:
        if not callable(getattr(obj, name, None)):
            continue
        if isinstance(obj, Callback) and not _overrides(obj, name):
            alias = _ALIASES.get(name)
            if alias is None or not _overrides(obj, alias):
                continue
        out.append(name)
    return out


class _Native:
    """A built-in run by lcjit itself: ``fit`` reads ``_lcjit_native()``."""

    _kind = ""

    def __init__(self, **kwargs: Any) -> None:
        self._config = kwargs

    def _lcjit_native(self) -> Tuple[str, Dict[str, Any]]:
        return (self._kind, dict(self._config))

    def get_config(self) -> Dict[str, Any]:
        """The arguments, as Keras's ``get_config``."""
        return dict(self._config)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


class EarlyStopping(_Native):
    """Stop training when a monitored quantity stops improving (tf-keras semantics,
    including ``restore_best_weights``, ``baseline`` and ``start_from_epoch``)."""

    _kind = "EarlyStopping"

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 0,
        verbose: int = 0,
        mode: str = "auto",
        baseline: Optional[float] = None,
        restore_best_weights: bool = False,
        start_from_epoch: int = 0,
    ) -> None:
        super().__init__(
            monitor=monitor,
            min_delta=float(min_delta),
            patience=int(patience),
            verbose=int(verbose),
            mode=mode,
            baseline=None if baseline is None else float(baseline),
            restore_best_weights=bool(restore_best_weights),
            start_from_epoch=int(start_from_epoch),
        )


class ReduceLROnPlateau(_Native):
    """Reduce the learning rate when a metric has stopped improving; logs ``lr``."""

    _kind = "ReduceLROnPlateau"

    def __init__(
        self,
        monitor: str = "val_loss",
        factor: float = 0.1,
        patience: int = 10,
        verbose: int = 0,
        mode: str = "auto",
        min_delta: float = 1e-4,
        cooldown: int = 0,
        min_lr: float = 0.0,
        **kwargs: Any,
    ) -> None:
        if "epsilon" in kwargs:  # Keras's deprecated name of min_delta
            min_delta = kwargs.pop("epsilon")
        if kwargs:
            raise TypeError(f"ReduceLROnPlateau: unexpected arguments {sorted(kwargs)}")
        super().__init__(
            monitor=monitor,
            factor=float(factor),
            patience=int(patience),
            verbose=int(verbose),
            mode=mode,
            min_delta=float(min_delta),
            cooldown=int(cooldown),
            min_lr=float(min_lr),
        )


class ModelCheckpoint(_Native):
    """Save the model or its weights during training; ``filepath`` may hold Keras's
    format fields (``{epoch:02d}``, ``{val_loss:.4f}``)."""

    _kind = "ModelCheckpoint"

    def __init__(
        self,
        filepath: Any,
        monitor: str = "val_loss",
        verbose: int = 0,
        save_best_only: bool = False,
        save_weights_only: bool = False,
        mode: str = "auto",
        save_freq: Any = "epoch",
        initial_value_threshold: Optional[float] = None,
    ) -> None:
        super().__init__(
            filepath=str(filepath),
            monitor=monitor,
            verbose=int(verbose),
            save_best_only=bool(save_best_only),
            save_weights_only=bool(save_weights_only),
            mode=mode,
            save_freq=save_freq,
            initial_value_threshold=(
                None if initial_value_threshold is None else float(initial_value_threshold)
            ),
        )


class CSVLogger(_Native):
    """Stream each epoch's logs to a CSV file (``epoch`` then the keys sorted)."""

    _kind = "CSVLogger"

    def __init__(self, filename: Any, separator: str = ",", append: bool = False) -> None:
        super().__init__(filename=str(filename), separator=separator, append=bool(append))


class TerminateOnNaN(_Native):
    """Stop training after a batch whose loss is NaN or infinite."""

    _kind = "TerminateOnNaN"

    def __init__(self) -> None:
        super().__init__()


class LearningRateScheduler(_Native):
    """Set the learning rate at the start of each epoch to ``schedule(epoch, lr)``."""

    _kind = "LearningRateScheduler"

    def __init__(self, schedule: Callable[[int, float], float], verbose: int = 0) -> None:
        if not callable(schedule):
            raise TypeError("LearningRateScheduler: schedule must be callable")
        super().__init__(schedule=schedule, verbose=int(verbose))
