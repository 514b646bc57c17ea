#!/usr/bin/env bash
# Inject benchmark: sluice vs a stock Postfix, side by side in one run.
#
# Both servers listen on free loopback ports, keep their spool/queue under
# one temporary directory, fsync every accepted message before the 250, and
# relay to the same smtp-sink on loopback (nothing leaves 127.0.0.1), so
# each measures inject with its own delivery running, as in production.
# Between phases the script waits until both queues are empty and the
# machine has settled (dirty pages written back, CPU idle again).
# Load: Postfix's smtp-source, 4 KiB single-recipient messages, a new
# connection per message, at 1, 20 and 100 concurrent sessions. Then
# bench/latency.py measures the time from the end of DATA to the 250 at 20
# sessions (p50/p90/p99) against both servers.
#
# Usage: bench/inject.sh             (builds sluice --release first)
#   SLUICE_BIN=path   use this binary instead of building
#   MESSAGES_1=500 MESSAGES_N=5000 LATENCY_MESSAGES=3000 WARMUP=500  message counts
#   ROUNDS=3          runs per concurrency level (medians are printed)
#   KEEP=1            keep the temporary directory
# Needs root for Postfix (its daemons drop to the postfix user); installs
# postfix (for postfix, smtp-source, smtp-sink) and python3 with apt if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MESSAGES_1=${MESSAGES_1:-500}
MESSAGES_N=${MESSAGES_N:-5000}
LATENCY_MESSAGES=${LATENCY_MESSAGES:-3000}
WARMUP=${WARMUP:-500}
ROUNDS=${ROUNDS:-3}
SIZE=4096

need=()
command -v /usr/sbin/postfix >/dev/null 2>&1 || need+=(postfix)
command -v /usr/sbin/smtp-source >/dev/null 2>&1 || need+=(postfix)
command -v python3 >/dev/null 2>&1 || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
    echo "== installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ "$(id -u)" != 0 ]; then
    echo "inject.sh: run as root (Postfix needs it)" >&2
    exit 1
fi

# shellcheck source=bench/lib.sh
. bench/lib.sh

work=$(mktemp -d /tmp/sluice-bench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
    set +e
    [ -d "$work/postfix/etc" ] && /usr/sbin/postfix -c "$work/postfix/etc" stop >/dev/null 2>&1
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done
    if [ -z "${KEEP:-}" ]; then rm -rf "$work"; else echo "kept $work"; fi
}
trap cleanup EXIT

if [ -z "${SLUICE_BIN:-}" ]; then
    echo "== cargo build --release"
    cargo build --release --quiet --bin sluice
    SLUICE_BIN=target/release/sluice
fi

sink_port=$(free_port)
sluice_port=$(free_port)
postfix_port=$(free_port)

echo "== smtp-sink on 127.0.0.1:$sink_port"
/usr/sbin/smtp-sink -u postfix -c 127.0.0.1:"$sink_port" 1000 >/dev/null 2>&1 &
pids+=($!)

echo "== sluice on 127.0.0.1:$sluice_port"
mkdir -p "$work/sluice"
cat >"$work/sluice/sluice.toml" <<EOF
hostname = "bench.sluice.test"
[spool]
path = "$work/sluice/spool"
[[listener]]
address = "127.0.0.1:$sluice_port"
[admin]
address = "127.0.0.1:0"
[limits]
max_connections = 2000
max_connections_per_ip = 2000
[delivery]
port = $sink_port
[routes]
"*" = "127.0.0.1:$sink_port"
[log]
level = "info"
EOF
"$SLUICE_BIN" serve --config "$work/sluice/sluice.toml" 2>"$work/sluice/log" &
pids+=($!)

echo "== postfix on 127.0.0.1:$postfix_port"
pf="$work/postfix"
mkdir -p "$pf/etc" "$pf/queue" "$pf/data"
cat >"$pf/etc/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $pf/queue
data_directory = $pf/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.postfix.test
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:$sink_port
smtp_host_lookup = native
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = $pf/maillog
maillog_file_prefixes = $work
EOF
cat >"$pf/etc/master.cf" <<EOF
127.0.0.1:$postfix_port inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
proxywrite unix - - n - 1 proxymap
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
showq     unix  n - n - - showq
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
EOF
chown postfix "$pf/data"
/usr/sbin/postfix -c "$pf/etc" check >/dev/null 2>&1 || true
if ! /usr/sbin/postfix -c "$pf/etc" start >/dev/null 2>&1; then
    echo "postfix did not start:" >&2
    tail -5 "$pf/maillog" >&2 || true
    exit 1
fi

wait_port() {
    for _ in $(seq 1 100); do
        if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),1).recv(100)" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing answers on port $1" >&2
    exit 1
}
wait_port "$sluice_port"
wait_port "$postfix_port"

# Runs smtp-source; prints messages per second.
inject() { # port sessions messages
    local start end
    start=$(date +%s.%N)
    /usr/sbin/smtp-source -s "$2" -m "$3" -l "$SIZE" -f bench@bench.test -t sink@sink.test 127.0.0.1:"$1"
    end=$(date +%s.%N)
    python3 -c "print(f'{$3 / ($end - $start):.0f}')"
}

# Waits until both servers have relayed everything to the sink, so no phase
# runs against the other server's leftover delivery work.
drain() {
    for _ in $(seq 1 600); do
        local sluice_left postfix_left
        sluice_left=$("$SLUICE_BIN" queue list --json --config "$work/sluice/sluice.toml" 2>/dev/null |
            python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 1)
        postfix_left=$(find "$pf/queue/incoming" "$pf/queue/active" "$pf/queue/deferred" \
            "$pf/queue/maildrop" -type f 2>/dev/null | wc -l)
        if [ "$sluice_left" = 0 ] && [ "$postfix_left" = 0 ]; then
            return 0
        fi
        sleep 0.1
    done
    echo "warning: queues not drained after 60s (sluice $sluice_left, postfix $postfix_left)" >&2
}

# Warm-up, not measured: first connections, caches, Postfix's smtpd processes.
inject "$sluice_port" 10 "$WARMUP" >/dev/null
inject "$postfix_port" 10 "$WARMUP" >/dev/null
drain

echo
echo "== inject rate: smtp-source, ${SIZE}-byte messages, one connection per message, median of $ROUNDS runs"
printf '%-9s %12s %12s %8s   %s\n' sessions "sluice/s" "postfix/s" ratio "(each run: sluice/postfix)"
for sessions in 1 20 100; do
    count=$MESSAGES_N
    [ "$sessions" = 1 ] && count=$MESSAGES_1
    sluice_rates=()
    postfix_rates=()
    runs=""
    for round in $(seq 1 "$ROUNDS"); do
        # Alternate who goes first: neither always meets the busier machine.
        if [ $((round % 2)) = 1 ]; then
            s=$(inject "$sluice_port" "$sessions" "$count"); drain; settle
            p=$(inject "$postfix_port" "$sessions" "$count"); drain; settle
        else
            p=$(inject "$postfix_port" "$sessions" "$count"); drain; settle
            s=$(inject "$sluice_port" "$sessions" "$count"); drain; settle
        fi
        sluice_rates+=("$s")
        postfix_rates+=("$p")
        runs="$runs $s/$p"
    done
    sluice_rate=$(median "${sluice_rates[@]}")
    postfix_rate=$(median "${postfix_rates[@]}")
    ratio=$(python3 -c "print(f'{$sluice_rate / $postfix_rate:.1f}x')")
    printf '%-9s %12s %12s %8s  %s\n' "$sessions" "$sluice_rate" "$postfix_rate" "$ratio" "$runs"
done

echo
echo "== latency from end of DATA to the 250, 20 sessions, $LATENCY_MESSAGES messages"
settle
echo -n "sluice : "; python3 bench/latency.py 127.0.0.1:"$sluice_port" 20 "$LATENCY_MESSAGES" "$SIZE"
drain
settle
echo -n "postfix: "; python3 bench/latency.py 127.0.0.1:"$postfix_port" 20 "$LATENCY_MESSAGES" "$SIZE"

accepted=$(grep -c "message accepted" "$work/sluice/log" || true)
echo
echo "sluice accepted $accepted messages (log lines)"
