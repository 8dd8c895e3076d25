#!/usr/bin/env bash
# Where a send's CPU goes at a light load, in two measurements that do not depend on the
# machine's noise:
#
# 1. Instructions, counted by `valgrind --tool=callgrind` (repeatable for the same binary
#    and input): Heartline runs under callgrind twice with the same chat load at a low rate
#    (valgrind runs the program ~50x slower) for SHORT and LONG measured seconds; the
#    difference between the two runs, divided by the difference in sends, is what one
#    more send costs (its ten deliveries and its ack included), without the connects,
#    logins and joins both runs share (the longer run's extra heartbeats and pings for
#    200 connections are counted in, ~7 % of it). Broken down by the thread or task.
# 2. CPU time, natively, at 500 sends/s: utime and stime of the server over 10 s of the
#    same load, per send.
#
# Usage: tests/bench/profile.sh   (SKIP_BUILD=1 to use the release binaries as they are)
# Prints a table and writes tests/bench/results/profile-<stamp>.json.
set -euo pipefail
source "$(dirname "$0")/common.sh"

SHORT=${SHORT:-10}
LONG=${LONG:-40}
CG_RATE=${CG_RATE:-10}
ADDR=127.0.0.1:3104
WORK=$(mktemp -d /tmp/heartline-profile.XXXXXX)
OUT="$BENCH/results/profile-$STAMP.json"
TICK=$(getconf CLK_TCK)

command -v valgrind >/dev/null || { log "valgrind is needed (Debian package valgrind)"; exit 1; }
build_release

SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill -9 "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT

heartline_toml "$ADDR" "$WORK/heartline.db" >"$WORK/heartline.toml"

# start [WRAPPER...]: the server on a fresh database, wrapped (e.g. by valgrind).
start() {
    rm -f "$WORK"/heartline.db*
    RUST_LOG=warn "$@" "$HL" --config "$WORK/heartline.toml" >>"$WORK/heartline.log" 2>&1 &
    SERVER_PID=$!
    wait_healthz "$ADDR" 600 && return 0
    log "the server did not start"; exit 1
}

stop() {
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID" || true
    SERVER_PID=
}

# chat SECS RATE OUTFILE: the benchmark's chat load, 20 conversations of 10 members.
chat() {
    "$LOAD" --addr "$ADDR" --secret "$SECRET" --api-key "$APIKEY" --src-net 65 \
        chat --groups 20 --members 10 --secs "$1" --rate "$2" --warmup-secs 2 \
        --connect-concurrency 20 >"$3" 2>&1
}

for secs in "$SHORT" "$LONG"; do
    log "callgrind: $secs s at $CG_RATE sends/s"
    start valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$secs.out"
    chat "$secs" "$CG_RATE" "$WORK/load.$secs.out"
    sleep 1
    stop
    callgrind_annotate --auto=no --tree=calling --inclusive=yes --threshold=100 \
        "$WORK/cg.$secs.out" >"$WORK/tree.$secs.txt"
done

log "native: 10 s of CPU time at 500 sends/s"
start
chat 20 500 "$WORK/load.native.out" &
load_pid=$!
sleep 8
read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$SERVER_PID/stat")
sleep 10
read -r u2 s2 < <(awk '{print $14, $15}' "/proc/$SERVER_PID/stat")
wait "$load_pid"
stop

python3 - "$WORK" "$SHORT" "$LONG" "$((u2 - u1))" "$((s2 - s1))" "$TICK" "$OUT" "$STAMP" <<'PY'
import json, os, re, sys
work, short, long_, du, ds, tick, out, stamp = sys.argv[1:]
du, ds, tick = int(du), int(ds), int(tick)

def summary(name):
    for line in open(os.path.join(work, name)):
        if line.startswith('{"scenario"'):
            return json.loads(line)
    raise SystemExit(f"no summary in {name}")

def costs(secs):
    """Inclusive instructions per function, from callgrind_annotate's calling tree."""
    total, found = 0, {}
    pat = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\*\s+\S+?:(.+?)\s*(\[.*\])?$")
    for line in open(os.path.join(work, f"tree.{secs}.txt")):
        if "PROGRAM TOTALS" in line:
            total = int(line.split()[0].replace(",", ""))
        m = pat.match(line)
        if m:
            n, fn = int(m.group(1).replace(",", "")), m.group(2).strip()
            found[fn] = max(found.get(fn, 0), n)
    return total, found

s_sum, l_sum = summary(f"load.{short}.out"), summary(f"load.{long_}.out")
# Both runs have the same warm-up, so the difference is in the measured windows.
sends = l_sum["acked"] - s_sum["acked"]
(t_s, f_s), (t_l, f_l) = costs(short), costs(long_)

def per_send(fn):
    return round((f_l.get(fn, 0) - f_s.get(fn, 0)) / sends)

parts = [
    ("store thread (append, commit)", "heartline_runtime::storage::commit"),
    ("  of which SQLite's commit (log pages, checksums)", "sqlite3BtreeCommitPhaseOne.part.0"),
    ("actor task (the core and its effects)", "heartline_runtime::actor::Actor<A>::run::{{closure}}"),
    ("  of which the core (Gateway::handle_input)", "heartline_core::gateway::Gateway::handle_input"),
    ("  of which the core's timers (Gateway::handle_timeout)", "heartline_core::gateway::Gateway::handle_timeout"),
    ("connection tasks (WebSocket read, write)", "heartline_runtime::websocket::serve::{{closure}}"),
    ("tokio worker threads in all (tasks, scheduler, I/O driver)", "tokio::runtime::scheduler::multi_thread::worker::run"),
]
native = summary("load.native.out")
n_sends = native["acks_per_sec"] * 10
result = {
    "stamp": stamp,
    "machine": json.loads(os.environ["MACHINE_JSON"]),
    "callgrind": {
        "rate": s_sum["rate"], "short_secs": int(short), "long_secs": int(long_),
        "extra_sends": sends,
        "instructions_per_send": round((t_l - t_s) / sends),
        "parts": {label.strip(): per_send(fn) for label, fn in parts},
    },
    "native_500": {
        "sends": n_sends,
        "utime_us_per_send": round(du / tick / n_sends * 1e6, 1),
        "stime_us_per_send": round(ds / tick / n_sends * 1e6, 1),
        "ack_p50_ms": native["ack_p50_ms"], "ack_p99_ms": native["ack_p99_ms"],
    },
}
json.dump(result, open(out, "w"), indent=2)
cg = result["callgrind"]
print(f"callgrind, {cg['extra_sends']} extra sends at {cg['rate']:g}/s "
      f"({long_} s run minus {short} s run), per send with 10 deliveries and its ack:")
print(f"  {cg['instructions_per_send']:>9,}  instructions in the whole server")
for label, fn in parts:
    print(f"  {per_send(fn):>9,}  {label}")
nv = result["native_500"]
print(f"native, 500 sends/s, 10 s ({n_sends:,.0f} sends): user {nv['utime_us_per_send']} us, "
      f"system {nv['stime_us_per_send']} us of CPU per send; ack p50 {nv['ack_p50_ms']} ms, "
      f"p99 {nv['ack_p99_ms']} ms")
print(f"results: {out}")
PY
rm -rf "$WORK"
