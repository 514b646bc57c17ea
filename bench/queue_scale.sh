#!/bin/sh
# The queue at scale: COUNT deferred 4 KiB messages (two recipients each,
# one refused attempt logged, due again in 12 hours: what a relay to a closed
# port leaves), then per build: start-up to the first 220, RSS at rest and
# after `queue list`, idle CPU, time to the first line of `queue list`,
# `queue hold --all` / `release --all` through the API and offline, and the
# offline commands' peak RSS (see bench/queue_scale.py).
#
#   bench/queue_scale.sh [COUNT] [OLD_BIN]    (default 100000; release build)
#
# With OLD_BIN, that binary is measured first on the same spool, then this
# tree's: "before" and "after" side by side in one run. Needs about 8 KiB
# of disk per message (tmp dir: TMPDIR). IDLE_SECONDS=10 sets the idle
# CPU window.
set -eu
count=${1:-100000}
old=${2:-}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
cargo build --release --quiet --bin sluice --example queue_fill
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "== filling $count deferred messages"
"$root/target/release/examples/queue_fill" "$work/spool" "$count" --deferred
du -sh "$work/spool"
if [ -n "$old" ]; then
    python3 bench/queue_scale.py "$work/spool" "old=$old" "new=$root/target/release/sluice"
else
    python3 bench/queue_scale.py "$work/spool" "sluice=$root/target/release/sluice"
fi
