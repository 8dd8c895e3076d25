#!/usr/bin/env bash
# How many idle authenticated connections this machine holds with heartbeats on.
#
# One process may hold at most 20,000 open files here (a hard limit), so one Heartline
# process tops out at ~19,900 connections. To measure past that, this runs SERVERS
# Heartline processes side by side (each on its own port with its own store; they are
# independent single nodes and share no state) and spreads the clients over load-generator
# processes of at most LOAD_CONNS connections each, from distinct source addresses in
# 127.0.0.0/8. Every connection authenticates, answers pings and heartbeat events, and is
# held HOLD_SECS (several ping intervals). Reports per server and in total: connections
# held, connections lost (any close while held: a missed ping deadline would be one),
# the servers' ping-timeout closes, and VmRSS per connection. Writes
# tests/bench/results/scale-<server>-<date>.json.
#
# SERVER=peer runs the Node peer (tests/peer/) the same way, for the same figures side by
# side; it exports no close counters, so its closes are known from the clients alone
# (the server-side fields are null).
#
# Settings (environment): SERVER=heartline SERVERS=5 PER_SERVER=19800 LOAD_CONNS=9900
# HOLD_SECS=40 NET_BASE=100 (first source network, 127.NET.0.0/16, one per load process)
# SKIP_BUILD=1 (use the binaries already built) SCALE_OUT=<results file>.
set -euo pipefail

# shellcheck source=tests/bench/common.sh
. "$(dirname "$0")/common.sh"
SERVER=${SERVER:-heartline}
case "$SERVER" in heartline | peer) ;; *) log "SERVER must be heartline or peer"; exit 2 ;; esac
SERVERS=${SERVERS:-5}
PER_SERVER=${PER_SERVER:-19800}
LOAD_CONNS=${LOAD_CONNS:-9900}
HOLD_SECS=${HOLD_SECS:-40}
BASE_PORT=3120
WORK=$(mktemp -d /tmp/heartline-scale.XXXXXX)
OUT=${SCALE_OUT:-"$BENCH/results/scale-$SERVER-$STAMP.json"}

SERVER_PIDS=()
LOAD_PIDS=()
cleanup() {
    for p in "${LOAD_PIDS[@]}" "${SERVER_PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

build_release
[ "$SERVER" = peer ] && install_peer

metric_sum() { # metric_sum ADDR PREFIX: sum of every sample whose name starts with PREFIX
    curl -sf "http://$1/metrics" | awk -v k="$2" 'index($1, k) == 1 {s += $2} END {print s + 0}'
}

for i in $(seq 0 $((SERVERS - 1))); do
    port=$((BASE_PORT + i))
    if [ "$SERVER" = peer ]; then
        start_peer "127.0.0.1:$port" "$WORK/peer$i.db" "$WORK/peer$i.log"
        SERVER_PIDS+=("$!")
        continue
    fi
    cat >"$WORK/hl$i.toml" <<EOF
[server]
listen = "127.0.0.1:$port"
max_connections = $((PER_SERVER + 100))
[engine]
ping_interval_ms = $PING_INTERVAL
ping_timeout_ms = $PING_TIMEOUT
[heartbeat]
interval_ms = $HEARTBEAT
[auth]
jwt_secret = "$SECRET"
[store]
path = "$WORK/hl$i.db"
EOF
    RUST_LOG=warn "$HL" --config "$WORK/hl$i.toml" >>"$WORK/hl$i.log" 2>&1 &
    SERVER_PIDS+=("$!")
done
for i in $(seq 0 $((SERVERS - 1))); do
    wait_healthz "127.0.0.1:$((BASE_PORT + i))" || log "server $i did not answer /healthz"
done
sleep 2
BASE_RSS=()
for i in $(seq 0 $((SERVERS - 1))); do BASE_RSS+=("$(rss_kb "${SERVER_PIDS[$i]}")"); done

# Load processes: per server, ceil(PER_SERVER / LOAD_CONNS) of them, one after another so
# that the connect phases do not fight over the two cores.
net=${NET_BASE:-100}
LOADS=()
for i in $(seq 0 $((SERVERS - 1))); do
    left=$PER_SERVER
    j=0
    while [ "$left" -gt 0 ]; do
        n=$((left < LOAD_CONNS ? left : LOAD_CONNS))
        tag="s$i-l$j"
        "$LOAD" --addr "127.0.0.1:$((BASE_PORT + i))" --secret "$SECRET" --src-net "$net" \
            --prefix "$tag" idle --conns "$n" --hold-secs 3600 --connect-secs 300 \
            --ready-file "$WORK/$tag.ready" --stop-file "$WORK/stop" \
            >"$WORK/$tag.out" 2>"$WORK/$tag.err" &
        LOAD_PIDS+=("$!")
        LOADS+=("$tag")
        for _ in $(seq 1 3100); do [ -s "$WORK/$tag.ready" ] && break; sleep 0.1; done
        log "$tag: $(cat "$WORK/$tag.ready" 2>/dev/null || echo '?') connected to server $i"
        left=$((left - n)); j=$((j + 1)); net=$((net + 1))
    done
done

held_at_start=0
for i in $(seq 0 $((SERVERS - 1))); do
    c=$(metric_sum "127.0.0.1:$((BASE_PORT + i))" heartline_connections)
    held_at_start=$((held_at_start + ${c%.*}))
done
log "all load processes connected: $held_at_start connections; holding ${HOLD_SECS}s"
closes_before=()
if [ "$SERVER" = heartline ]; then
    for i in $(seq 0 $((SERVERS - 1))); do
        closes_before+=("$(metric_sum "127.0.0.1:$((BASE_PORT + i))" heartline_closes_total)")
    done
fi
sleep "$HOLD_SECS"

rows="$WORK/servers.jsonl"
: >"$rows"
for i in $(seq 0 $((SERVERS - 1))); do
    addr="127.0.0.1:$((BASE_PORT + i))"
    conns=$(metric_sum "$addr" heartline_connections)
    rss=$(rss_kb "${SERVER_PIDS[$i]}")
    closed=null; pingto=null
    if [ "$SERVER" = heartline ]; then
        closes=$(metric_sum "$addr" heartline_closes_total)
        pingto=$(metric_sum "$addr" 'heartline_closes_total{reason="ping_timeout"')
        closed=$(( ${closes%.*} - ${closes_before[$i]%.*} )); pingto=${pingto%.*}
    fi
    printf '{"server": %d, "connections": %d, "closes_during_hold": %s, "ping_timeout_closes": %s, "rss_base_kb": %d, "rss_kb": %d}\n' \
        "$i" "${conns%.*}" "$closed" "$pingto" "${BASE_RSS[$i]}" "$rss" >>"$rows"
done
touch "$WORK/stop"
for p in "${LOAD_PIDS[@]}"; do wait "$p" || true; done
LOAD_PIDS=()

python3 - "$rows" "$WORK" "$OUT" "$STAMP" "$HOLD_SECS" "$SERVER" "${LOADS[@]}" <<'PY'
import json, os, sys, pathlib
rows_path, work, out, stamp, hold, kind = sys.argv[1:7]
loads = sys.argv[7:]
servers = [json.loads(l) for l in open(rows_path) if l.strip()]
work = pathlib.Path(work)
gen = []
for tag in loads:
    lines = [l for l in (work / f"{tag}.out").read_text().splitlines() if l.startswith('{"scenario"')]
    if lines:
        d = json.loads(lines[-1]); d["tag"] = tag; gen.append(d)
held = sum(s["connections"] for s in servers)
lost = sum(g["lost"] for g in gen)
delta_kb = sum(s["rss_kb"] - s["rss_base_kb"] for s in servers)
total_rss_kb = sum(s["rss_kb"] for s in servers)
def total(field):
    vals = [s[field] for s in servers]
    return None if None in vals else sum(vals)
summary = {
    "server": kind, "servers": len(servers), "connections_held": held,
    "clients_connected": sum(g["connected"] for g in gen),
    "clients_still_connected": sum(g["still_connected"] for g in gen),
    "clients_lost": lost,
    "server_closes_during_hold": total("closes_during_hold"),
    "server_ping_timeout_closes": total("ping_timeout_closes"),
    "heartbeat_events_answered": sum(g["heartbeats"] for g in gen),
    "hold_secs": float(hold),
    "servers_rss_total_mib": round(total_rss_kb / 1024, 1),
    "bytes_per_connection": round(delta_kb * 1024 / held) if held else None,
}
print()
for s in servers:
    closed = "closes unknown" if s["closes_during_hold"] is None else (
        f"{s['closes_during_hold']} closed while held ({s['ping_timeout_closes']} ping timeouts)")
    print(f"{kind} {s['server']}: {s['connections']:>6} connections, {closed}, "
          f"VmRSS {s['rss_kb'] / 1024:.1f} MiB")
print()
for k, v in summary.items():
    print(f"{k:<32} {v}")
json.dump({"date": stamp, **json.loads(os.environ["MACHINE_JSON"]),
           "summary": summary, "servers": servers, "load": gen}, open(out, "w"), indent=1)
print(f"\nresults: {out}")
PY
for p in "${SERVER_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${SERVER_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
SERVER_PIDS=()
log "work directory (logs, per-process output): $WORK"
