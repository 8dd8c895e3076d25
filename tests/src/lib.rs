//! End-to-end tests across Heartline's crates live in `tests/tests/`; this library is
//! empty on purpose. (The runtime's own end-to-end tests are in `runtime/tests/`, those
//! with `socket.io-client` and a browser in `tests/node/`.)
