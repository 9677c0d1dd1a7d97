"""Type stubs of the extension module ``lcjit._native`` (see ``python/src/``).

Users call these through :mod:`lcjit` (``lcjit.Model`` subclasses :class:`NativeModel`);
the names here are the native layer, documented for type checkers and readers.
"""

from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

_F32 = npt.NDArray[np.float32]

class NativeModel:
    """A Keras model loaded by lcjit: weights, compiled programs, training state."""

    def __new__(
        cls,
        source: str,
        *,
        kind: str = "path",
        weights: Optional[str] = None,
        engine: str = "jit",
        threads: Optional[int] = None,
        memory_budget: Optional[int] = None,
        seed: int = 0,
        weights_dtype: str = "f32",
        wide: str = "auto",
        autotune: Union[bool, float, None] = None,
        tune_cache: Optional[str] = None,
    ) -> "NativeModel":
        """Loads ``source``: a file path (``kind="path"``) or JSON text (``kind="json"``)."""
    @property
    def engine(self) -> str:
        """``jit``, ``interp`` or ``reference``."""
    @property
    def threads(self) -> int:
        """Worker threads of the compiled programs."""
    @property
    def weights_dtype(self) -> str:
        """How LC and Dense kernels are stored for prediction: ``f32``, ``bf16``, ``f16``."""
    @property
    def wide(self) -> str:
        """The SIMD tier past f32x4: ``auto``, ``off``, ``avx2`` or ``avx512``."""
    @property
    def autotune(self) -> float:
        """The autotuning budget in seconds (0: off)."""
    @property
    def tune_cache(self) -> Optional[str]:
        """The autotuning cache file (``None``: none, or autotuning off)."""
    @property
    def memory_budget(self) -> int:
        """Bytes a tensor or the weights may take."""
    @property
    def name(self) -> str:
        """The model's name."""
    @property
    def input_shapes(self) -> List[List[int]]:
        """Per-sample input shapes."""
    @property
    def output_shapes(self) -> List[List[int]]:
        """Per-sample output shapes."""
    def summary_text(self) -> str:
        """Keras's summary table."""
    def to_json(self) -> str:
        """The configuration in the tf-keras dialect."""
    def training_config_json(self) -> Optional[str]:
        """The training configuration as JSON, if any."""
    def layer_info(self) -> List[Tuple[str, str, List[int], bool, List[str], int]]:
        """Per layer: name, class, output shape, trainable, weight names, parameter count."""
    def get_weights(self, layer: Optional[str] = None) -> List[_F32]:
        """Weights in Keras layout and order (one layer's with ``layer``)."""
    def set_weights(self, weights: Sequence[Any], layer: Optional[str] = None) -> None:
        """Replaces every weight (or one layer's)."""
    def load_weights(self, path: str) -> None:
        """Replaces every weight from a ``.h5`` or ``.npz`` file."""
    def predict_outputs(
        self, x: Any, batch_size: int = 32, outputs: Sequence[str] = ...
    ) -> List[Tuple[str, _F32]]:
        """``(layer name, outputs)`` per requested layer (the model's outputs if none)."""
    def save(self, path: str) -> None:
        """Saves the model (``.h5``, ``.keras``, ``.npz``)."""
    def save_weights(self, path: str) -> None:
        """Saves the weights (``.h5``, ``.npz``)."""
    def gradients(self, x: Any, dy: Any) -> Tuple[_F32, List[Tuple[str, _F32]]]:
        """Gradient of ``sum(y * dy)`` (inference mode): ``dx`` and named weight gradients."""
    def compile_json(self, optimizer: str, loss: str, metrics: Optional[str] = None) -> None:
        """Sets optimizer, loss and metrics from their Keras JSON forms."""
    def metric_names(self) -> List[str]:
        """Names of the compiled metrics."""
    def fit_native(
        self,
        model: Any,
        x: Any,
        y: Any,
        batch_size: int,
        epochs: int,
        verbose: int,
        callbacks: List[Any],
        validation_split: float,
        validation_data: Optional[Tuple[Any, Any]],
        shuffle: bool,
        seed: Optional[int],
        progress: Optional[Tuple[Any, bool]] = None,
    ) -> Tuple[List[Tuple[str, List[float]]], List[int], List[str], Optional[str]]:
        """Keras's ``fit``: history items, epochs, warnings, stop reason."""
    def evaluate_native(self, x: Any, y: Any, batch_size: int = 32) -> List[Tuple[str, float]]:
        """Keras's ``evaluate``: loss, then each metric."""
    def compute_gradients(self, x: Any, y: Any) -> Tuple[float, List[Tuple[str, _F32]]]:
        """One training step's loss and named Keras-layout gradients."""
    def apply_gradients(self, grads: List[Tuple[str, Any]]) -> None:
        """The optimizer step with named gradients."""

def ir_text(model: NativeModel, stage: str = "loops", batch: int = 1, backward: bool = False) -> str:
    """What ``lcjit ir`` prints."""

def bench_json(
    model: NativeModel,
    batch: int = 32,
    threads: Optional[int] = None,
    engines: Sequence[str] = ("jit",),
    train: bool = False,
    probe: bool = False,
) -> str:
    """``lcjit bench --json`` on a model."""

def epoch_orders(n: int, epochs: int, seed: Optional[int] = None) -> List[List[int]]:
    """The sample order of each epoch of ``fit`` (``seed=None``: unshuffled)."""
