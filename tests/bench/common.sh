# Shared by compare.sh and scale.sh (sourced, not run): where things are, the servers'
# timing settings, the results file's stamp, logging and the release build.
#
# Sets ROOT, BENCH, PING_INTERVAL, PING_TIMEOUT, HEARTBEAT, SECRET, STAMP, LOAD, HL, and
# exports MACHINE_JSON (cores, CPU model, memory) for the results files; defines log and
# build_release (which skips the build when SKIP_BUILD is set).

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH="$ROOT/tests/bench"
PING_INTERVAL=10000
PING_TIMEOUT=10000
HEARTBEAT=10000
SECRET=bench-secret
STAMP=$(date -u +%Y-%m-%dT%H-%M-%SZ)
mkdir -p "$BENCH/results"
LOAD="$ROOT/target/release/heartline-load"
HL="$ROOT/target/release/heartline"

MACHINE_JSON=$(python3 - <<'PY'
import json, os
cpu = ""
for line in open("/proc/cpuinfo"):
    if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip(); break
print(json.dumps({"nproc": os.cpu_count(), "cpu": cpu,
                  "mem_total_kb": int(open("/proc/meminfo").readline().split()[1])}))
PY
)
export MACHINE_JSON

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

build_release() {
    [ -n "${SKIP_BUILD:-}" ] && return 0
    log "building release binaries"
    (cd "$ROOT" && cargo build --release -p heartline-runtime --bin heartline --bin heartline-load)
}
