#!/usr/bin/env bash
# Runs Heartline's whole test suite on a fresh machine: installs what the tests need, then
# runs every test. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace --locked
