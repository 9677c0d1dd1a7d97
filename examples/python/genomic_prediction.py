"""Genomic prediction with a locally connected network over SNP markers.

    python examples/python/genomic_prediction.py [--markers M] [--samples N] [--epochs E]

Simulates N individuals genotyped at M SNP markers (0/1/2 copies of the minor allele,
Hardy-Weinberg frequencies) and a phenotype made of a sparse additive effect (a few dozen
causal markers) plus noise, then trains the "local CNN" of genomic prediction: each
LocallyConnected1D unit sees its own window of neighbouring markers with its own weights
(markers are not exchangeable, so unshared weights fit better than a convolution)::

    InputLayer (M,) -> Reshape (M, 1) -> LocallyConnected1D(filters, kernel 10, stride 10)
    -> Flatten -> Dense 1          (L2 penalty on the kernels)

The model is written as a tf-keras JSON configuration (what ``model.to_json()`` gives),
built with ``lcjit.Model.from_json``, compiled (Adam, MSE, MAE metric) and fitted with
early stopping on a validation set; the script reports the correlation of predicted and
true phenotypes on held-out individuals, then saves the model to ``.h5``, reloads it with
``lcjit.load`` and checks the reloaded model predicts the same.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np

import lcjit


def _init(name: str, **config: Any) -> Dict[str, Any]:
    return {"module": "keras.initializers", "class_name": name, "config": config, "registered_name": None}


def _layer(class_name: str, config: Dict[str, Any], input_shape: Optional[list] = None) -> Dict[str, Any]:
    out = {"module": "keras.layers", "class_name": class_name, "config": config, "registered_name": None}
    if input_shape is not None:
        out["build_config"] = {"input_shape": input_shape}
    return out


def local_cnn_config(markers: int, filters: int = 2, kernel: int = 10, strides: int = 10,
                     l2: float = 0.0) -> Dict[str, Any]:
    """The tf-keras configuration (``model.to_json()`` layout) of the local CNN, with an L2
    penalty ``l2`` on the kernels (ridge-like shrinkage, as GBLUP's)."""
    reg = None
    if l2:
        reg = {"module": "keras.regularizers", "class_name": "L2", "config": {"l2": l2}, "registered_name": None}
    positions = (markers - kernel) // strides + 1
    common = {"trainable": True, "dtype": "float32"}
    weights = {
        "use_bias": True,
        "kernel_initializer": _init("GlorotUniform", seed=None),
        "bias_initializer": _init("Zeros"),
        "kernel_regularizer": reg,
        "bias_regularizer": None,
        "activity_regularizer": None,
        "kernel_constraint": None,
        "bias_constraint": None,
    }
    layers = [
        _layer("InputLayer", {"batch_input_shape": [None, markers], "dtype": "float32", "sparse": False,
                              "ragged": False, "name": "genotypes"}),
        _layer("Reshape", {"name": "markers", **common, "target_shape": [markers, 1]}, [None, markers]),
        _layer("LocallyConnected1D", {
            "name": "local", **common, "filters": filters, "kernel_size": [kernel], "strides": [strides],
            "padding": "valid", "data_format": "channels_last", "activation": "linear", **weights,
            "implementation": 1,
        }, [None, markers, 1]),
        _layer("Flatten", {"name": "flatten", **common, "data_format": "channels_last"}, [None, positions, filters]),
        _layer("Dense", {"name": "phenotype", **common, "units": 1, "activation": "linear", **weights},
               [None, positions * filters]),
    ]
    return {
        "class_name": "Sequential",
        "config": {"name": "local_cnn", "layers": layers},
        "keras_version": "2.21.0",
        "backend": "tensorflow",
    }


def simulate(samples: int, markers: int, causal: int, heritability: float, rng: np.random.Generator):
    """Genotypes (0/1/2, float32) and a phenotype with the given heritability."""
    freq = rng.uniform(0.05, 0.5, markers)
    genotypes = rng.binomial(2, freq, size=(samples, markers)).astype(np.float32)
    effects = np.zeros(markers)
    where = rng.choice(markers, causal, replace=False)
    effects[where] = rng.standard_normal(causal)
    genetic = (genotypes - 2 * freq) @ effects
    noise_sd = np.sqrt(genetic.var() * (1 - heritability) / heritability)
    phenotype = genetic + rng.normal(0, noise_sd, samples)
    phenotype = (phenotype - phenotype.mean()) / phenotype.std()
    return genotypes, phenotype.astype(np.float32)[:, None], genetic


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markers", type=int, default=3000)
    ap.add_argument("--samples", type=int, default=1500)
    ap.add_argument("--causal", type=int, default=30)
    ap.add_argument("--heritability", type=float, default=0.7)
    ap.add_argument("--filters", type=int, default=2)
    ap.add_argument("--l2", type=float, default=3e-2, help="L2 penalty on the kernels")
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    x, y, _ = simulate(args.samples, args.markers, args.causal, args.heritability, rng)
    n_train, n_val = int(0.7 * len(x)), int(0.15 * len(x))
    xt, yt = x[:n_train], y[:n_train]
    xv, yv = x[n_train : n_train + n_val], y[n_train : n_train + n_val]
    xh, yh = x[n_train + n_val :], y[n_train + n_val :]
    print(f"{args.samples} individuals x {args.markers} SNPs ({args.causal} causal, h2={args.heritability}); "
          f"train {len(xt)}, validation {len(xv)}, held out {len(xh)}")

    model = lcjit.Model.from_json(json.dumps(local_cnn_config(args.markers, args.filters, l2=args.l2)), seed=args.seed)
    model.summary()
    model.compile(optimizer={"class_name": "Adam", "config": {"learning_rate": 1e-3}}, loss="mse", metrics=["mae"])

    t = time.perf_counter()
    history = model.fit(
        xt, yt, batch_size=32, epochs=args.epochs, verbose=0, shuffle=True, seed=args.seed,
        validation_data=(xv, yv),
        callbacks=[lcjit.callbacks.EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True)],
    )
    t_fit = time.perf_counter() - t
    h = history.history
    best = int(np.argmin(h["val_loss"]))
    print(f"\ntrained {len(history.epoch)} epochs in {t_fit:.2f} s"
          + (f" ({history.stopped})" if history.stopped else ""))
    print(f"best epoch {best + 1}: loss {h['loss'][best]:.4f}, mae {h['mae'][best]:.4f}, "
          f"val_loss {h['val_loss'][best]:.4f}, val_mae {h['val_mae'][best]:.4f}")

    pred = model.predict(xh, batch_size=256)
    r = float(np.corrcoef(pred[:, 0], yh[:, 0])[0, 1])
    loss, mae = model.evaluate(xh, yh, batch_size=256, verbose=0)  # loss: MSE + L2 penalty
    mse = float(np.mean((pred - yh) ** 2))
    print(f"held out: correlation(predicted, true phenotype) = {r:.3f}; mse {mse:.4f}, mae {mae:.4f} "
          f"(loss with the L2 penalty {loss:.4f})")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "local_cnn.h5"
        model.save(path)
        again = lcjit.load(path)
        diff = float(np.max(np.abs(again.predict(xh, batch_size=256) - pred)))
    print(f"saved to .h5 and reloaded: max |reloaded - trained| = {diff:.3g}")
    if diff > 1e-6:
        print("FAILED: the reloaded model predicts differently", file=sys.stderr)
        return 1
    if not r > 0.3:
        print(f"FAILED: held-out correlation {r:.3f} is too low", file=sys.stderr)
        return 1
    print(f"OK: held-out correlation {r:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
