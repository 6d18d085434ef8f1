#!/usr/bin/env bash
# One open-loop run shaped like `tally-bench compare`'s, on a fresh node, with the node's own
# figures beside the client's. The p99s of docs/design.md §3 ("Where an open-loop batch's time
# goes", "What the open-loop tail is made of") were measured this way (by an ad hoc form of this
# script). To compare two builds, interleave runs of each and reverse the order in half the
# pairs: this host's speed changes by the hour.
#
#   bench/open-loop.sh RATE [BATCH] [CONNECTIONS]
#
# Environment: TALLY (the node binary, default target/release/tally), BENCH (default
# target/release/tally-bench), DATA (a data directory, created and removed; default
# ./open-loop-data; the node's log is left beside it as DATA.log), PORT (default 3002),
# NODE_ARGS (more `tally start` flags, e.g. `--snapshot-every 1000000000` for no snapshots).
# Prints one line: the rate reached, the client's p50 and p99, the node's mean log fdatasync
# and the snapshots built during the measured run (with the bytes they took on disk); then the
# p99 of each second. RUST_LOG (default warn) is passed to the node: `RUST_LOG=info` puts each
# "snapshot built" line in DATA.log.
set -euo pipefail

rate=${1:?usage: open-loop.sh RATE [BATCH] [CONNECTIONS]}
batch=${2:-2048}
connections=${3:-8}
tally=${TALLY:-target/release/tally}
bench=${BENCH:-target/release/tally-bench}
data=${DATA:-./open-loop-data}
port=${PORT:-3002}
target=http://127.0.0.1:$port
for value in "$rate" "$batch" "$connections"; do
    if ! [[ $value =~ ^[1-9][0-9]*$ ]]; then
        echo "open-loop.sh: '$value' is not a positive whole number (RATE, BATCH, CONNECTIONS)" >&2
        exit 2
    fi
done
for binary in "$tally" "$bench"; do
    if [ ! -x "$binary" ]; then
        echo "open-loop.sh: no binary at $binary (cargo build --release -p tally-api -p tally-bench)" >&2
        exit 2
    fi
done

rm -rf "$data"
mkdir -p "$data"
TALLY_ACCOUNTS_MAX=1048576 TALLY_TRANSFERS_MAX=33554432 RUST_LOG=${RUST_LOG:-warn} \
    "$tally" start --data-dir "$data" --http "127.0.0.1:$port" ${NODE_ARGS:-} >"$data.log" 2>&1 &
node=$!
trap 'kill -TERM $node 2>/dev/null; wait $node 2>/dev/null; rm -rf "$data"' EXIT
answering=false
for _ in $(seq 1 100); do
    if curl -s -o /dev/null "$target/v1/accounts/1"; then
        answering=true
        break
    fi
    sleep 0.1
done
if [ "$answering" != true ]; then
    echo "open-loop.sh: the node did not answer on $target within 10 s; its log: $data.log" >&2
    exit 1
fi

load() {
    "$bench" load --target "$target" --workload uniform --mode binary --batch "$batch" \
        --connections "$connections" --rate "$rate" "$@" | tail -1
}
metric() {
    awk -v name="$1" '$1 == name { print $2 }' <<<"$2"
}

# The node's first seconds (cold caches, first connections) are not what a running ledger's
# users see: the same load first, unmeasured, as `compare` does.
load --duration-seconds 3 --verify-sample 100 >/dev/null
before=$(curl -s "$target/metrics")
result=$(load --duration-seconds 10 --verify-sample 1000)
after=$(curl -s "$target/metrics")

# The change over the measured run; a metric not yet recorded counts as 0.
change() {
    local now was
    now=$(metric "$1" "$after")
    was=$(metric "$1" "$before")
    awk "BEGIN { print ${now:-0} - ${was:-0} }"
}
fsync_seconds=$(change tally_journal_fsync_seconds_sum)
fsyncs=$(change tally_journal_fsync_seconds_count)
snapshots=$(change tally_snapshots_built_total)
snapshot_bytes=$(change tally_snapshot_bytes_stored_total)
python3 - "$result" "$fsync_seconds" "$fsyncs" "$snapshots" "$snapshot_bytes" <<'EOF'
import json, sys
run = json.loads(sys.argv[1])
fsync_seconds, fsyncs, snapshots = float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
snapshot_mb = float(sys.argv[5]) / 1e6
print(
    f"rate {run['rate_target']:.0f}/s: {run['transfers_per_second']:.0f}/s acknowledged, "
    f"p50 {run['p50_ms']} ms, p99 {run['p99_ms']} ms, "
    f"log fdatasync mean {1000 * fsync_seconds / max(fsyncs, 1):.3f} ms over {fsyncs:.0f}, "
    f"snapshots built {snapshots} ({snapshot_mb:.0f} MB on disk), errors {run['errors']}, "
    f"verification {'passed' if run['verification']['passed'] else 'FAILED'}"
)
per_second = run.get("p99_ms_per_second")
if per_second:
    print("p99 of each second (ms): " + " ".join(f"{value:.1f}" for value in per_second))
EOF
