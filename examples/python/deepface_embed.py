"""Face embeddings with DeepFace's architecture: the layer before the classifier.

    python examples/python/deepface_embed.py [--faces N] [--seed S]

Builds DeepFace (Taigman et al. 2014: Conv2D C1, MaxPool M2, Conv2D C3, locally connected
L4-L6, Dense F7 4096, Dropout, Dense F8 8631 softmax; 137.8 M parameters) from the
tf-keras configuration in ``tests/data/workloads/deepface.json``, weights drawn from its
initializers (no trained weights ship with the repository, so the embeddings are those of
an untrained network; load trained ones with ``lcjit.load(config, weights="w.h5")``).
It embeds N synthetic "faces" (smooth random 152x152 RGB images) and a slightly perturbed
copy of face 0 with the outputs of the layer that feeds the classifier (``F7``), ranks
the faces by cosine similarity to face 0 and checks the perturbed copy comes first.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np

import lcjit

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "tests" / "data" / "workloads" / "deepface.json"

# Layers that do not change what a representation is (skipped to find the embedding).
_PASS_THROUGH = {"Dropout", "Activation", "ActivityRegularization", "GaussianNoise", "GaussianDropout"}


def embedding_layer(model: lcjit.Model) -> str:
    """The layer whose output the classifier (the last layer) reads, past Dropout."""
    layers = model.layers
    for layer in reversed(layers[:-1]):
        if layer.class_name not in _PASS_THROUGH:
            return layer.name
    raise ValueError("the model has no layer before its classifier")


def smooth_faces(n: int, shape: tuple, rng: np.random.Generator, coarse: int = 8) -> np.ndarray:
    """``n`` smooth random images: coarse random grids, bilinearly upsampled, in [0, 1]."""
    h, w, c = shape
    grid = rng.random((n, coarse, coarse, c), dtype=np.float32)
    ys = np.linspace(0, coarse - 1, h, dtype=np.float32)
    xs = np.linspace(0, coarse - 1, w, dtype=np.float32)
    y0 = np.minimum(ys.astype(int), coarse - 2)
    x0 = np.minimum(xs.astype(int), coarse - 2)
    fy = (ys - y0)[None, :, None, None]
    fx = (xs - x0)[None, None, :, None]
    g = lambda dy, dx: grid[:, (y0 + dy)[:, None], (x0 + dx)[None, :], :]  # noqa: E731
    img = (g(0, 0) * (1 - fy) * (1 - fx) + g(1, 0) * fy * (1 - fx)
           + g(0, 1) * (1 - fy) * fx + g(1, 1) * fy * fx)
    return np.ascontiguousarray(img, dtype=np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``a`` with every row of ``b``."""
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=str(CONFIG), help="model configuration or file")
    ap.add_argument("--faces", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    model = lcjit.load(args.config, seed=args.seed)
    t_load = time.perf_counter() - t
    model.summary()
    emb_layer = embedding_layer(model)
    print(f"\nbuilt in {t_load:.2f} s; embedding layer: {emb_layer} "
          f"{model.get_layer(emb_layer).output_shape} (the classifier is {model.layers[-1].name})")

    rng = np.random.default_rng(args.seed)
    faces = smooth_faces(args.faces, model.input_shape[1:], rng)
    noisy = faces[:1] + 0.02 * rng.standard_normal(faces[:1].shape).astype(np.float32)
    batch = np.concatenate([faces, noisy])
    batch -= batch.mean(axis=(1, 2, 3), keepdims=True)  # per-image centering

    t = time.perf_counter()
    emb = model.predict(batch, batch_size=len(batch), output=emb_layer)
    t_pred = time.perf_counter() - t
    print(f"{len(batch)} embeddings {emb.shape[1:]} in {t_pred * 1e3:.0f} ms")

    names = [f"face {i}" for i in range(args.faces)] + ["face 0 + noise"]
    sim = cosine(emb, emb)[0]
    print(f"\n{'compared with face 0':<20} {'cosine':>8}")
    for i in np.argsort(-sim):
        print(f"{names[i]:<20} {sim[i]:8.4f}")
    others = [i for i in range(1, len(batch)) if names[i] != "face 0 + noise"]
    best = max(range(1, len(batch)), key=lambda i: sim[i])
    if names[best] != "face 0 + noise":
        print(f"\nFAILED: {names[best]} is closer to face 0 than its perturbed copy", file=sys.stderr)
        return 1
    print(f"\nOK: the perturbed copy of face 0 is its nearest face "
          f"(cosine {sim[best]:.4f}; next {max(sim[i] for i in others):.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
