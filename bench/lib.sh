# Shell helpers shared by the side-by-side benchmarks (source it).

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Waits (up to 10 s) until something listens on 127.0.0.1:PORT.
wait_port() { # port
    for _ in $(seq 1 200); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench: nothing listens on port $1" >&2
    return 1
}

# The median of the numbers given (the lower middle one for an even count).
median() { printf '%s\n' "$@" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

# Waits until the machine is quiet: dirty pages written back and at least
# 90% of the CPU idle over a second (at most 30 s), so that one side is not
# charged for the other's clean-up (Postfix deletes a queue file a message).
settle() {
    sync
    for _ in $(seq 1 30); do
        local idle
        idle=$(python3 -c '
import time
def snap():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[3] + v[4], sum(v)
i0, t0 = snap(); time.sleep(1); i1, t1 = snap()
print(int(100 * (i1 - i0) / max(1, t1 - t0)))')
        if [ "$idle" -ge 90 ]; then
            return 0
        fi
    done
}
