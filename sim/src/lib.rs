//! Heartline simulator.
