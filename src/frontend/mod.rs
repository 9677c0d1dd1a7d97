//! Keras model configurations (tf-keras 2.x, Keras 2.0–2.4, Keras 1) to the graph IR.
