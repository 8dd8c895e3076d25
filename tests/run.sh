#!/usr/bin/env bash
# Runs Heartline's whole test suite on a fresh machine: installs what the tests need, then
# runs every test. This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "Debian's Chromium for the browser test, and sqlite3 for the store's test against it"
if ! command -v chromium >/dev/null 2>&1 || ! command -v sqlite3 >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium sqlite3 >/dev/null
fi
# The browser test runs this one (it would look for /usr/bin/chromium).
CHROMIUM="${CHROMIUM:-$(command -v chromium)}"
export CHROMIUM

step "npm packages for the client tests (pinned by tests/node/package-lock.json)"
npm ci --prefix tests/node --no-audit --no-fund --loglevel=error

# A fresh clone builds once: incremental artefacts would only take disk space.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

step "build (free disk: $(df -h --output=avail . | tail -1 | tr -d ' '))"
cargo build --workspace --locked --bins
# Kept apart: `cargo test --workspace` links the binaries again with the simulator's
# test-only `mutations` feature of the core (features unify across one build), and the
# client tests are to run the binaries as shipped.
mkdir -p target/shipped
cp target/debug/heartline target/debug/heartline-echo target/shipped/

step "Rust tests: core, runtime, simulator"
cargo test --workspace --locked

step "socket.io-client and the browser page against the real binaries"
HEARTLINE_BIN="$PWD/target/shipped/heartline" \
  HEARTLINE_ECHO_BIN="$PWD/target/shipped/heartline-echo" \
  npm test --prefix tests/node
