#!/usr/bin/env bash
# Two builds of sluice side by side in one run (a change against its base):
# both servers run at once, each relaying to one smtp-sink on loopback, and
# the load alternates between them, so both meet the same machine.
# Load: Postfix's smtp-source, 4 KiB single-recipient messages, a new
# connection per message, SESSIONS concurrent sessions, ROUNDS rounds (who
# goes first alternates); each inject is followed by a wait until both
# queues are empty, so it measures inject with its own delivery running.
# Prints the median inject rate of each and their ratio.
#
# Usage: bench/ab.sh OLD_BIN NEW_BIN
#   MESSAGES=4000  SESSIONS=20  ROUNDS=5  KEEP=1
#   OLD_EXTRA / NEW_EXTRA: TOML appended to that side's config, e.g. one
#   binary against itself with a "*" shaping rule that never binds:
#   NEW_EXTRA=$'[shaping."*"]\nrate = "100000/s"\nconnections = 1000' bench/ab.sh B B
# Needs smtp-source and smtp-sink (Debian's postfix package). Nothing leaves
# 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-4000}
SESSIONS=${SESSIONS:-20}
ROUNDS=${ROUNDS:-5}
SIZE=4096
export PATH="$PATH:/usr/sbin"

work=$(mktemp -d /tmp/sluice-ab-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

if [ $# -ne 2 ]; then
    echo "usage: bench/ab.sh OLD_BIN NEW_BIN" >&2
    exit 2
fi
declare -A bin=([old]=$1 [new]=$2)

# shellcheck source=bench/lib.sh
. bench/lib.sh

sink_port=$(free_port)
smtp-sink -u postfix -c 127.0.0.1:"$sink_port" 1000 >/dev/null 2>&1 &
pids+=($!)
wait_port "$sink_port"

kinds=(old new)
declare -A smtp_port
for kind in "${kinds[@]}"; do
    dir="$work/$kind"
    mkdir -p "$dir"
    smtp_port[$kind]=$(free_port)
    cat >"$dir/sluice.toml" <<EOF
hostname = "bench-$kind.sluice.test"
[spool]
path = "$dir/spool"
[[listener]]
address = "127.0.0.1:${smtp_port[$kind]}"
[admin]
address = "127.0.0.1:0"
[limits]
max_connections = 2000
max_connections_per_ip = 2000
[delivery]
tls = "disabled"
[routes]
"*" = "127.0.0.1:$sink_port"
EOF
    if [ "$kind" = old ]; then extra=${OLD_EXTRA:-}; else extra=${NEW_EXTRA:-}; fi
    printf '%s\n' "$extra" >>"$dir/sluice.toml"
    "${bin[$kind]}" serve --config "$dir/sluice.toml" 2>"$dir/log" &
    pids+=($!)
    wait_port "${smtp_port[$kind]}"
done

inject() { # port
    local start end
    start=$(date +%s.%N)
    smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -f bench@origin.test \
        -t rcpt@sink.test 127.0.0.1:"$1"
    end=$(date +%s.%N)
    python3 -c "print(f'{$MESSAGES / ($end - $start):.0f}')"
}

drain() { # wait until every queue is empty
    local k left
    for k in "${kinds[@]}"; do
        for _ in $(seq 1 600); do
            left=$("${bin[$k]}" queue list --json --config "$work/$k/sluice.toml" 2>/dev/null |
                python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 1)
            [ "$left" = 0 ] && break
            sleep 0.2
        done
    done
}


declare -A rates
echo "== $ROUNDS rounds of $MESSAGES messages at $SESSIONS sessions (msgs/s)"
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then order=(old new); else order=(new old); fi
    line="round $round:"
    for kind in "${order[@]}"; do
        rate=$(inject "${smtp_port[$kind]}")
        drain
        rates[$kind]="${rates[$kind]:-} $rate"
        line="$line $kind=$rate"
    done
    echo "$line"
done

# shellcheck disable=SC2086
old=$(median ${rates[old]})
# shellcheck disable=SC2086
new=$(median ${rates[new]})
python3 -c "print(f'median inject: old {$old} msgs/s, new {$new} msgs/s, new/old = {$new / $old:.3f}')"
