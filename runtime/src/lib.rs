//! Heartline runtime.
