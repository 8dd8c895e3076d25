//! Heartline's sans-IO core.
