#!/bin/sh
# Measures `sluice queue list` and per-message commands on a big queue,
# offline (spool opened directly) and through the admin API, side by side.
#
#   bench/queue_list.sh [COUNT] [BASELINE_REV]   (default 100000; release build)
#
# Prints wall and CPU time and peak RSS of each command (GNU time; on a busy
# machine CPU time is the steadier figure), the milliseconds per offline
# show/hold/release (median of RUNS runs, default 5), and the server's peak
# RSS before and after a full listing.
#
# With BASELINE_REV (a git revision, e.g. main or a commit), the offline
# figures are measured for the binary built from that revision too, on the
# same spool in the same run: "before" and "after" side by side. It is built
# from `git archive` in a temporary directory, into this tree's target/ (so
# dependencies are reused), before this tree's binary is built.
set -eu
count=${1:-100000}
baseline_rev=${2:-}
runs=${RUNS:-5}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

if [ -n "$baseline_rev" ]; then
    echo "== building the baseline $baseline_rev ($(git rev-parse --short "$baseline_rev"))"
    mkdir "$work/baseline-src"
    git archive "$baseline_rev" | tar -x -C "$work/baseline-src"
    cargo build --release --quiet --bin sluice \
        --manifest-path "$work/baseline-src/Cargo.toml" --target-dir "$root/target"
    cp "$root/target/release/sluice" "$work/sluice-baseline"
    rm -rf "$work/baseline-src"
fi
cargo build --release --quiet --bin sluice --example queue_fill
sluice=$root/target/release/sluice
cat >"$work/sluice.toml" <<TOML
hostname = "bench.test"
[spool]
path = "$work/spool"
[[listener]]
address = "127.0.0.1:0"
[admin]
address = "127.0.0.1:0"
[dns]
nameservers = ["127.0.0.1:9"]
[routes]
"*" = "127.0.0.1:9"
[log]
level = "warn"
TOML
echo "== filling $count messages"
# Held, so the server started below does not try to deliver them meanwhile.
"$root/target/release/examples/queue_fill" "$work/spool" "$count" --held
first=$("$sluice" queue list --json --config "$work/sluice.toml" | sed -n '2s/.*"id":"\([A-Za-z0-9]*\)".*/\1/p')

measure() {
    label=$1; shift
    /usr/bin/time -f "$label: %es wall, %Us user, %Ss sys, %MKiB max RSS" "$@" >/dev/null
}

# Median wall milliseconds of RUNS runs of a command.
per_command() {
    label=$1; shift
    times=
    i=0
    while [ $i -lt "$runs" ]; do
        start=$(date +%s%N)
        "$@" >/dev/null
        end=$(date +%s%N)
        times="$times $(( (end - start) / 1000000 ))"
        i=$((i + 1))
    done
    median=$(echo $times | tr ' ' '\n' | sort -n | sed -n "$(( (runs + 1) / 2 ))p")
    echo "$label: median ${median} ms of $runs runs (ms:$times)"
}

offline() {
    name=$1; bin=$2
    echo "== offline (no server): $name"
    measure "list        " "$bin" queue list --config "$work/sluice.toml"
    measure "list --json " "$bin" queue list --json --config "$work/sluice.toml"
    measure "show        " "$bin" queue show "$first" --config "$work/sluice.toml"
    measure "hold        " "$bin" queue hold "$first" --config "$work/sluice.toml"
    per_command "show        " "$bin" queue show "$first" --config "$work/sluice.toml"
    per_command "hold        " "$bin" queue hold "$first" --config "$work/sluice.toml"
    per_command "release     " "$bin" queue release "$first" --config "$work/sluice.toml"
    # Left held, as queue_fill made it.
    "$bin" queue hold "$first" --config "$work/sluice.toml" >/dev/null
}

if [ -n "$baseline_rev" ]; then
    offline "baseline $baseline_rev" "$work/sluice-baseline"
    offline "this tree" "$sluice"
    offline "baseline $baseline_rev (again)" "$work/sluice-baseline"
else
    offline "this tree" "$sluice"
fi
"$sluice" queue list --config "$work/sluice.toml" | tail -1

echo "== through the admin API"
"$sluice" serve --config "$work/sluice.toml" 2>"$work/server.log" &
server_pid=$!
i=0
while [ ! -s "$work/spool/admin.address" ]; do
    i=$((i + 1)); [ $i -gt 600 ] && { echo "server did not start"; cat "$work/server.log"; exit 1; }
    sleep 0.1
done
echo "server peak RSS before listing: $(grep VmHWM /proc/$server_pid/status)"
measure "list        " "$sluice" queue list --config "$work/sluice.toml"
measure "list --json " "$sluice" queue list --json --config "$work/sluice.toml"
measure "show        " "$sluice" queue show "$first" --config "$work/sluice.toml"
measure "hold        " "$sluice" queue hold "$first" --config "$work/sluice.toml"
per_command "show        " "$sluice" queue show "$first" --config "$work/sluice.toml"
per_command "hold        " "$sluice" queue hold "$first" --config "$work/sluice.toml"
per_command "release     " "$sluice" queue release "$first" --config "$work/sluice.toml"
echo "server peak RSS after listing:  $(grep VmHWM /proc/$server_pid/status)"
"$sluice" queue list --config "$work/sluice.toml" | tail -1
