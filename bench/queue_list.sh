#!/bin/sh
# Measures `sluice queue list` and per-message commands on a big queue,
# offline (spool opened directly) and through the admin API, side by side.
#
#   bench/queue_list.sh [COUNT]      (default 100000; release build)
#
# Prints wall and CPU time and peak RSS of each command (GNU time; on a busy
# machine CPU time is the steadier figure), and the server's
# peak RSS before and after a full listing.
set -eu
count=${1:-100000}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin sluice --example queue_fill
sluice=$root/target/release/sluice
work=$(mktemp -d)
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
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

echo "== offline (no server)"
measure "list        " "$sluice" queue list --config "$work/sluice.toml"
measure "list --json " "$sluice" queue list --json --config "$work/sluice.toml"
measure "show        " "$sluice" queue show "$first" --config "$work/sluice.toml"
measure "hold        " "$sluice" queue hold "$first" --config "$work/sluice.toml"
measure "release     " "$sluice" queue release "$first" --config "$work/sluice.toml"
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
measure "release     " "$sluice" queue release "$first" --config "$work/sluice.toml"
echo "server peak RSS after listing:  $(grep VmHWM /proc/$server_pid/status)"
"$sluice" queue list --config "$work/sluice.toml" | tail -1
