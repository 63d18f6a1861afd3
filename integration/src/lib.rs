//! End-to-end suites live in `tests/`; benchmark drivers in `benches/` and scripts.
//! The `vfio-nested` program (src/bin) runs inside a QEMU guest; what it
//! prints and the host test asserts is shared here.

pub mod nested;
