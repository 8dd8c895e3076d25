# Shared by compare.sh and scale.sh (sourced, not run): where things are, the servers'
# timing settings, the results file's stamp, logging and the release build.
#
# Sets ROOT, BENCH, PING_INTERVAL, PING_TIMEOUT, HEARTBEAT, SECRET, APIKEY, STAMP, LOAD,
# HL, and exports MACHINE_JSON (cores, CPU model, memory) for the results files; defines
# log, build_release and install_peer (both skipped when SKIP_BUILD is set), start_peer,
# heartline_toml, wait_healthz and rss_kb.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BENCH="$ROOT/tests/bench"
PING_INTERVAL=10000
PING_TIMEOUT=10000
HEARTBEAT=10000
SECRET=bench-secret
APIKEY=bench-key
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

# The peer's pinned packages (better-sqlite3 compiles, ~2 min), unless already installed.
install_peer() {
    [ -n "${SKIP_BUILD:-}" ] && return 0
    if [ ! -e "$ROOT/tests/peer/node_modules/better-sqlite3/build/Release/better_sqlite3.node" ]; then
        log "installing the peer's pinned packages (compiles better-sqlite3, ~2 min)"
        (cd "$ROOT/tests/peer" && npm ci --no-audit --no-fund >/dev/null)
    fi
}

# start_peer ADDR DB LOG: the Node peer in the background with the benchmark's settings
# (those Heartline gets too, and a rate limit that never refuses); its pid is in $!.
start_peer() {
    (cd "$ROOT/tests/peer" && exec env JWT_SECRET=$SECRET API_KEY=$APIKEY DB_PATH="$2" \
        PING_INTERVAL_MS=$PING_INTERVAL PING_TIMEOUT_MS=$PING_TIMEOUT \
        HEARTBEAT_INTERVAL_MS=$HEARTBEAT RATE_LIMIT_MESSAGES=1000000 \
        RATE_LIMIT_WINDOW_MS=1000 SQLITE_SYNCHRONOUS=FULL \
        node server.js --listen "$1") >>"$3" 2>&1 &
}

# heartline_toml ADDR DB: Heartline's configuration for compare.sh and profile.sh, on
# stdout: the timing settings above, a rate limit that never refuses, the store at DB.
heartline_toml() {
    cat <<EOF
[server]
listen = "$1"
[engine]
ping_interval_ms = $PING_INTERVAL
ping_timeout_ms = $PING_TIMEOUT
[heartbeat]
interval_ms = $HEARTBEAT
[rate_limit]
messages = 1000000
window_ms = 1000
[auth]
jwt_secret = "$SECRET"
[api]
key = "$APIKEY"
[store]
path = "$2"
EOF
}

# wait_healthz ADDR [TRIES]: until ADDR answers /healthz, 0.1 s apart (100 tries unless
# given); fails if it never does.
wait_healthz() {
    for _ in $(seq 1 "${2:-100}"); do
        curl -sf "http://$1/healthz" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# rss_kb PID: the process's resident memory, kB.
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
