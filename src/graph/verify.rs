//! Verifier of the graph IR invariants listed in the `graph` module docs.
