#!/usr/bin/env bash
# End-to-end relay throughput: sluice against a stock Postfix, side by side
# in one run, same machine, same load, same kind of sink.
#
#   smtp-source (SESSIONS sessions, MESSAGES messages of SIZE bytes)
#     -> MTA under test on 127.0.0.1 (sluice: a [routes] entry;
#        Postfix: a transport_maps entry, the equivalent)
#     -> smtp-sink (counts, and dumps envelopes to check exactly-once)
#
# The clock runs from the first injected message until the sink has every
# message; then the MTA's queue must be empty. Both MTAs fsync what they
# accept and allow 20 deliveries in parallel to the destination (Postfix's
# default_destination_concurrency_limit; sluice's per_domain_concurrency).
#
# Needs root (Postfix's master runs as root, smtp-sink must drop to a user),
# postfix, smtp-source and smtp-sink. Nothing leaves 127.0.0.1.
#
# Each of ROUNDS rounds (default 3) runs both, in alternating order, after
# the machine has settled (dirty pages written back, CPU idle again: the
# other MTA's clean-up must not be charged to the next one); medians of the
# rounds are printed at the end.
#
# Usage: bench/relay.sh            (MESSAGES=20000 SESSIONS=20 SIZE=4096 ROUNDS=3)
#        ONLY=sluice bench/relay.sh   (skip Postfix)
#        PERF=1 KEEP=1 ONLY=sluice bench/relay.sh   (profile sluice with perf)
#        SLUICE_BIN=/path/to/sluice bench/relay.sh   (use this binary instead of building;
#                                                     e.g. an older build, to compare two versions)

set -euo pipefail

MESSAGES=${MESSAGES:-20000}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-4096}
DEST_CONCURRENCY=${DEST_CONCURRENCY:-20}
TIMEOUT=${TIMEOUT:-600}
ONLY=${ONLY:-both}
ROUNDS=${ROUNDS:-3}

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$WORK"
SINK_USER=${SINK_USER:-postfix}

for tool in smtp-source smtp-sink postfix postconf python3; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || {
        echo "bench: $tool is required" >&2
        exit 1
    }
done
export PATH="$PATH:/usr/sbin"

PIDS=()
POSTFIX_DIR=""
cleanup() {
    set +e
    if [ -n "$POSTFIX_DIR" ]; then
        postfix -c "$POSTFIX_DIR/etc" stop >/dev/null 2>&1
    fi
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    if [ -z "${KEEP:-}" ]; then
        rm -rf "$WORK"
    else
        echo "bench: kept $WORK"
    fi
}
trap cleanup EXIT

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

now() { date +%s.%N; }


# Starts smtp-sink on a free port; sets SINK_PORT, SINK_OUT, SINK_DUMP.
start_sink() { # name
    SINK_PORT=$(free_port)
    mkdir -p "$WORK/$1"
    chown "$SINK_USER" "$WORK/$1"
    SINK_OUT="$WORK/$1/counter"
    SINK_DUMP="$WORK/$1/dump"
    : >"$SINK_DUMP"
    chown "$SINK_USER" "$SINK_DUMP"
    smtp-sink -c -u "$SINK_USER" -D "$SINK_DUMP" "127.0.0.1:$SINK_PORT" 1024 >"$SINK_OUT" 2>&1 &
    SINK_PID=$!
    PIDS+=($SINK_PID)
    wait_port "$SINK_PORT"
}

stop_sink() {
    kill "$SINK_PID" 2>/dev/null || true
    wait "$SINK_PID" 2>/dev/null || true
}


sink_count() {
    tail -c 200 "$SINK_OUT" 2>/dev/null | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 || true
}

# Injects the load into 127.0.0.1:$1, waits for the sink to have every
# message; prints the elapsed seconds.
run_load() { # port
    local start end count
    start=$(now)
    smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -N \
        -f bench@origin.test -t rcpt@sink.test "127.0.0.1:$1" &
    local source=$!
    local deadline=$((SECONDS + TIMEOUT))
    while :; do
        count=$(sink_count)
        if [ "${count:-0}" -ge "$MESSAGES" ]; then
            break
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "bench: timed out with ${count:-0}/$MESSAGES at the sink" >&2
            return 1
        fi
        sleep 0.05
    done
    end=$(now)
    wait "$source"
    python3 -c "print(f'{$end - $start:.3f}')"
}

# Every message exactly once: as many dumped transactions as messages, and
# each numbered recipient (smtp-source -N) seen once.
check_exactly_once() { # name
    sleep 0.5
    local total unique
    total=$(grep -c '^X-Rcpt-Args:' "$SINK_DUMP" || true)
    unique=$(grep '^X-Rcpt-Args:' "$SINK_DUMP" | sort -u | wc -l)
    if [ "$total" -eq "$MESSAGES" ] && [ "$unique" -eq "$MESSAGES" ]; then
        echo "$1: sink received all $MESSAGES messages exactly once"
    else
        echo "$1: FAILED exactly-once check: $total received, $unique distinct, $MESSAGES sent" >&2
        return 1
    fi
}

run_sluice() {
    if [ -z "${SLUICE_BIN:-}" ]; then
        (cd "$ROOT" && cargo build --release --quiet)
        SLUICE_BIN="$ROOT/target/release/sluice"
    fi
    start_sink sluice-sink
    local smtp_port admin_port
    smtp_port=$(free_port)
    admin_port=$(free_port)
    rm -rf "$WORK/sluice"
    mkdir -p "$WORK/sluice"
    cat >"$WORK/sluice/sluice.toml" <<EOF
hostname = "sluice.bench"

[spool]
path = "$WORK/sluice/spool"

[[listener]]
address = "127.0.0.1:$smtp_port"
kind = "relay"

[limits]
max_connections_per_ip = 1000

[delivery]
tls = "disabled"
concurrency = 100
per_domain_concurrency = $DEST_CONCURRENCY

[routes]
"sink.test" = "127.0.0.1:$SINK_PORT"

[admin]
address = "127.0.0.1:$admin_port"

[log]
level = "info"
EOF
    local wrapper=()
    if [ -n "${PERF:-}" ]; then
        # PERF=1: profile the server (report with perf report -i $WORK/perf.data).
        wrapper=(perf record -F 999 -g -o "$WORK/perf.data" --)
    fi
    NO_COLOR=1 "${wrapper[@]}" "$SLUICE_BIN" serve --config "$WORK/sluice/sluice.toml" \
        2>"$WORK/sluice/log" &
    local server=$!
    PIDS+=($server)
    wait_port "$smtp_port"
    SLUICE_SECONDS=$(run_load "$smtp_port")
    check_exactly_once sluice
    # CPU the server used (user + system), a figure less sensitive to other
    # load on the machine than wall-clock rates.
    local ticks
    ticks=$(awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$server/stat" 2>/dev/null || echo 0)
    python3 -c "t = $ticks / $(getconf CLK_TCK); print(f'sluice: server CPU time {t:.2f}s = {t * 1e6 / $MESSAGES:.0f} us per message')"
    kill -TERM "$server"
    wait "$server" || true
    local left
    left=$("$SLUICE_BIN" queue list --json --config "$WORK/sluice/sluice.toml" 2>/dev/null |
        python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo "?")
    echo "sluice: queue after the run: $left message(s)"
    stop_sink
    SLUICE_RATE=$(python3 -c "print(f'{$MESSAGES / $SLUICE_SECONDS:.0f}')")
    echo "sluice: $MESSAGES messages end to end in ${SLUICE_SECONDS}s = $SLUICE_RATE msgs/s"
}

run_postfix() {
    start_sink postfix-sink
    local port
    port=$(free_port)
    POSTFIX_DIR="$WORK/postfix"
    rm -rf "$POSTFIX_DIR"
    mkdir -p "$POSTFIX_DIR/etc" "$POSTFIX_DIR/queue" "$POSTFIX_DIR/data"
    chown postfix "$POSTFIX_DIR/data"
    cat >"$POSTFIX_DIR/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $POSTFIX_DIR/queue
data_directory = $POSTFIX_DIR/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
mail_owner = postfix
setgid_group = postdrop
myhostname = postfix.bench
mydomain = bench
myorigin = \$myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
transport_maps = inline:{sink.test=smtp:[127.0.0.1]:$SINK_PORT}
default_destination_concurrency_limit = $DEST_CONCURRENCY
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
biff = no
maillog_file_prefixes = $POSTFIX_DIR
maillog_file = $POSTFIX_DIR/maillog
EOF
    cat >"$POSTFIX_DIR/etc/master.cf" <<EOF
127.0.0.1:$port inet n - n - - smtpd
pickup     unix  n - n 60   1 pickup
cleanup    unix  n - n -    0 cleanup
qmgr       unix  n - n 300  1 qmgr
rewrite    unix  - - n -    - trivial-rewrite
bounce     unix  - - n -    0 bounce
defer      unix  - - n -    0 bounce
trace      unix  - - n -    0 bounce
verify     unix  - - n -    1 verify
flush      unix  n - n 1000 0 flush
proxymap   unix  - - n -    - proxymap
proxywrite unix  - - n -    1 proxymap
smtp       unix  - - n -    - smtp
relay      unix  - - n -    - smtp
showq      unix  n - n -    - showq
error      unix  - - n -    - error
retry      unix  - - n -    - error
discard    unix  - - n -    - discard
local      unix  - n n -    - local
anvil      unix  - - n -    1 anvil
scache     unix  - - n -    1 scache
postlog    unix-dgram n - n - 1 postlogd
EOF
    postfix -c "$POSTFIX_DIR/etc" check >/dev/null 2>&1 || true
    postfix -c "$POSTFIX_DIR/etc" start >/dev/null 2>&1
    wait_port "$port"
    POSTFIX_SECONDS=$(run_load "$port")
    check_exactly_once postfix
    local left
    left=$(postqueue -c "$POSTFIX_DIR/etc" -p 2>/dev/null | tail -1)
    echo "postfix: queue after the run: $left"
    postfix -c "$POSTFIX_DIR/etc" stop >/dev/null 2>&1 || true
    POSTFIX_DIR=""
    stop_sink
    POSTFIX_RATE=$(python3 -c "print(f'{$MESSAGES / $POSTFIX_SECONDS:.0f}')")
    echo "postfix: $MESSAGES messages end to end in ${POSTFIX_SECONDS}s = $POSTFIX_RATE msgs/s"
}

echo "bench: $MESSAGES messages of $SIZE bytes, $SESSIONS injecting sessions, $(nproc) CPUs"
case "$ONLY" in
sluice) run_sluice ;;
postfix) run_postfix ;;
*)
    sluice_runs=()
    postfix_runs=()
    for round in $(seq 1 "$ROUNDS"); do
        echo "== round $round"
        if [ $((round % 2)) = 1 ]; then
            settle; run_postfix; settle; run_sluice
        else
            settle; run_sluice; settle; run_postfix
        fi
        sluice_runs+=("$SLUICE_SECONDS")
        postfix_runs+=("$POSTFIX_SECONDS")
    done
    sluice_median=$(median "${sluice_runs[@]}")
    postfix_median=$(median "${postfix_runs[@]}")
    python3 -c "print(f'median of $ROUNDS: sluice {$MESSAGES / $sluice_median:.0f} msgs/s, postfix {$MESSAGES / $postfix_median:.0f} msgs/s')"
    python3 -c "print(f'ratio sluice/postfix: {$postfix_median / $sluice_median:.2f}x')"
    ;;
esac
