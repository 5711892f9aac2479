//! Cross-crate, interop and simulation tests live in `tests/tests/`.
