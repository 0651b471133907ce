//! Built-in BLOOM trainer (work in progress).
