#!/usr/bin/env bash
# What DKIM signing costs the inject rate: three sluice servers side by side
# in one run, the same binary and load, differing only in [[dkim]]:
#   none     no [[dkim]] entry
#   ed25519  one Ed25519 key for the messages' From: domain
#   rsa      one RSA-2048 key for it
# Load: Postfix's smtp-source, 4 KiB single-recipient messages (From:
# bench@origin.test, which is the signed domain), a new connection per
# message, SESSIONS concurrent sessions; each server relays to one smtp-sink
# on loopback. Rounds rotate who goes first; medians are printed. The
# signatures made are read from each server's /metrics, so a run where
# nothing was signed cannot pass for a cheap one.
#
# Usage: bench/dkim.sh      (builds sluice --release first)
#   SLUICE_BIN=path  MESSAGES=4000  SESSIONS=20  ROUNDS=3  KEEP=1
# Needs smtp-source and smtp-sink (Debian's postfix package). Nothing leaves
# 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES=${MESSAGES:-4000}
SESSIONS=${SESSIONS:-20}
ROUNDS=${ROUNDS:-3}
SIZE=4096
export PATH="$PATH:/usr/sbin"

work=$(mktemp -d /tmp/sluice-dkim-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    set +e
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

if [ -z "${SLUICE_BIN:-}" ]; then
    echo "== cargo build --release"
    cargo build --release --quiet --bin sluice
    SLUICE_BIN=target/release/sluice
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh

sink_port=$(free_port)
smtp-sink -u postfix -c 127.0.0.1:"$sink_port" 1000 >/dev/null 2>&1 &
pids+=($!)
wait_port "$sink_port"

kinds=(none ed25519 rsa)
declare -A smtp_port admin_port
for kind in "${kinds[@]}"; do
    dir="$work/$kind"
    mkdir -p "$dir"
    smtp_port[$kind]=$(free_port)
    admin_port[$kind]=$(free_port)
    dkim=""
    if [ "$kind" != none ]; then
        "$SLUICE_BIN" dkim keygen --domain origin.test --selector "$kind" \
            --algorithm "$kind" --out "$dir" >/dev/null
        dkim="[[dkim]]
domain = \"origin.test\"
selector = \"$kind\"
private_key = \"$dir/origin.test.$kind.pem\""
    fi
    cat >"$dir/sluice.toml" <<EOF
hostname = "bench-$kind.sluice.test"
[spool]
path = "$dir/spool"
[[listener]]
address = "127.0.0.1:${smtp_port[$kind]}"
[admin]
address = "127.0.0.1:${admin_port[$kind]}"
[limits]
max_connections = 2000
max_connections_per_ip = 2000
[delivery]
tls = "disabled"
[routes]
"*" = "127.0.0.1:$sink_port"
$dkim
EOF
    "$SLUICE_BIN" serve --config "$dir/sluice.toml" 2>"$dir/log" &
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

metric() { # kind name
    curl -s -H 'X-Sluice-Request: 1' "http://127.0.0.1:${admin_port[$1]}/metrics" |
        awk -v name="$2" '$1 == name { print $2 }'
}

drain() { # wait until every queue is empty
    local k left
    for k in "${kinds[@]}"; do
        for _ in $(seq 1 600); do
            left=$("$SLUICE_BIN" queue list --json --config "$work/$k/sluice.toml" 2>/dev/null |
                python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 1)
            [ "$left" = 0 ] && break
            sleep 0.2
        done
    done
}


declare -A rates
echo "== $ROUNDS rounds of $MESSAGES messages at $SESSIONS sessions (msgs/s)"
for round in $(seq 1 "$ROUNDS"); do
    order=("${kinds[@]:$((round % 3))}" "${kinds[@]:0:$((round % 3))}")
    line="round $round:"
    for kind in "${order[@]}"; do
        rate=$(inject "${smtp_port[$kind]}")
        drain
        rates[$kind]="${rates[$kind]:-} $rate"
        line="$line $kind=$rate"
    done
    echo "$line"
done

base=$(median ${rates[none]})
for kind in "${kinds[@]}"; do
    # shellcheck disable=SC2086
    m=$(median ${rates[$kind]})
    signed=$(metric "$kind" sluice_dkim_signatures_total)
    python3 -c "print(f'$kind: median {$m} msgs/s = {$m / $base:.2f} of unsigned; signatures made: ${signed:-0}')"
done
