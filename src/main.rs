//! The `lcjit` command-line tool.
fn main() {}
