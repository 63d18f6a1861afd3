//! End-to-end suites live in `tests/`; benchmark drivers in `benches/` and scripts.
