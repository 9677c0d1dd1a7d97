//! Deterministic text printer of the graph IR, Graphviz DOT, and the Keras-style summary.
