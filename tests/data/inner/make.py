"""Builds the inner-layer-output test data of tests/run_batched.rs with tf-keras 2.21.

A small DeepFace-like model (Conv2D, MaxPooling2D, LocallyConnected2D, Flatten, Dense
'F7', Dense softmax 'F8'), saved as model.h5, 70 input samples (x.npy: two full batches
of 32 and a partial one) and what Keras computes for them (expected.npz):
  - 'F8': model.predict(x), the model's output;
  - 'F7': keras.Model(model.inputs, model.get_layer('F7').output).predict(x), the
    embedding before the classifier (Dense with a fused relu: the activated output);
  - 'L4': the same for the locally connected layer (fused relu too).
Run: TF_CPP_MIN_LOG_LEVEL=3 CUDA_VISIBLE_DEVICES="" /work/venv/bin/python make.py
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
import tensorflow as tf
import tf_keras as keras

HERE = os.path.dirname(os.path.abspath(__file__))

tf.random.set_seed(7)
rng = np.random.default_rng(7)

inp = keras.Input(shape=(12, 12, 3), name="input")
h = keras.layers.Conv2D(4, 3, activation="relu", name="C1")(inp)
h = keras.layers.MaxPooling2D(2, name="M2")(h)
h = keras.layers.LocallyConnected2D(6, 3, activation="relu", name="L4")(h)
h = keras.layers.Flatten(name="flatten")(h)
h = keras.layers.Dense(16, activation="relu", name="F7")(h)
out = keras.layers.Dense(5, activation="softmax", name="F8")(h)
model = keras.Model(inp, out, name="mini_deepface")

# Non-zero biases, so a layer output that skipped its bias could not pass.
for layer in model.layers:
    ws = layer.get_weights()
    if len(ws) == 2:
        layer.set_weights([ws[0], rng.uniform(-0.3, 0.3, ws[1].shape).astype(np.float32)])

x = rng.standard_normal((70, 12, 12, 3)).astype(np.float32)
expected = {"F8": model.predict(x, batch_size=32, verbose=0)}
for name in ["F7", "L4"]:
    sub = keras.Model(model.inputs, model.get_layer(name).output)
    expected[name] = sub.predict(x, batch_size=32, verbose=0)

model.save(os.path.join(HERE, "model.h5"), save_format="h5")
np.save(os.path.join(HERE, "x.npy"), x)
np.savez(os.path.join(HERE, "expected.npz"), **expected)
for k, v in expected.items():
    print(k, v.shape, float(np.abs(v).max()))
