#!/usr/bin/env python3
"""Measures sluice on a big queue: one spool, one or more builds in turn.

usage: queue_scale.py SPOOL_DIR NAME=BIN [NAME=BIN ...]

SPOOL_DIR holds a spool filled by examples/queue_fill (deferred messages,
due in 12 hours, so a server leaves them alone). For each build, in order:

- serve: time from the spawn to the first 220 on the SMTP port; RSS once
  the server is idle ("at rest"); its CPU use over IDLE_SECONDS (default 10);
- through the admin API: `queue list` (time to its first line and to its
  end) and `queue hold --all` then `queue release --all` (the bulk actions
  stream over the store), with the server's RSS and peak RSS after each;
- offline (server stopped): the same list and bulk actions on the spool
  directly, with each command's peak RSS.

Prints one table, a column per build. Nothing leaves 127.0.0.1; the routes
point at a closed port. Only the Python standard library is needed.
"""
import os
import signal
import socket
import subprocess
import sys
import time

IDLE_SECONDS = float(os.environ.get("IDLE_SECONDS", "10"))
TICKS = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def write_config(work, spool, smtp_port):
    path = os.path.join(work, "sluice.toml")
    with open(path, "w") as f:
        f.write(f"""hostname = "bench.test"
[spool]
path = "{spool}"
[[listener]]
address = "127.0.0.1:{smtp_port}"
[admin]
address = "127.0.0.1:0"
[dns]
nameservers = ["127.0.0.1:9"]
[routes]
"*" = "127.0.0.1:9"
[log]
level = "warn"
""")
    return path


def wait_220(port, deadline):
    """Connects until the greeting arrives; returns when it did."""
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(512)
                    if not chunk:
                        break
                    data += chunk
                if data.startswith(b"220"):
                    return time.monotonic()
        except OSError:
            time.sleep(0.005)
    raise RuntimeError("no 220 before the deadline")


def wait_idle(pid, limit=120.0):
    """Waits until the process used under 2% of a core for a second."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        before = cpu_seconds(pid)
        time.sleep(1.0)
        if cpu_seconds(pid) - before < 0.02:
            return
    print(f"  (server {pid} not idle after {limit:.0f}s)", file=sys.stderr)


def run_timed(argv):
    """Runs a command; returns (first line s, total s, lines, peak RSS KiB, last line)."""
    start = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = None
    lines = 0
    last = b""
    for line in proc.stdout:
        if first is None:
            first = time.monotonic() - start
        lines += 1
        last = line
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    total = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv} exited {proc.returncode}: {stderr.decode(errors='replace')}")
    return first or total, total, lines, usage.ru_maxrss, (last or stderr).decode(errors="replace").strip()


def measure(name, binary, spool, work):
    row = {}
    port = free_port()
    config = write_config(work, spool, port)
    log = open(os.path.join(work, f"{name}.log"), "w")
    start = time.monotonic()
    server = subprocess.Popen([binary, "serve", "--config", config], stderr=log)
    try:
        row["start-up to first 220"] = f"{wait_220(port, start + 600) - start:.2f} s"
        wait_idle(server.pid)
        row["server RSS at rest"] = mib(status_kib(server.pid, "VmRSS"))
        before = cpu_seconds(server.pid)
        time.sleep(IDLE_SECONDS)
        used = cpu_seconds(server.pid) - before
        row[f"idle CPU over {IDLE_SECONDS:.0f} s"] = f"{used * 1000:.0f} ms"
        admin = os.path.join(spool, "admin.address")
        while not os.path.exists(admin):
            time.sleep(0.05)
        first, total, lines, _, last = run_timed([binary, "queue", "list", "--config", config])
        row["online list: first line"] = f"{first * 1000:.0f} ms"
        row["online list: whole"] = f"{total:.2f} s ({lines} lines)"
        row["server RSS after list"] = mib(status_kib(server.pid, "VmRSS"))
        for action in ("hold", "release"):
            _, total, _, _, last = run_timed([binary, "queue", action, "--all", "--config", config])
            row[f"online {action} --all"] = f"{total:.2f} s ({last})"
        row["server RSS after bulk"] = mib(status_kib(server.pid, "VmRSS"))
        row["server peak RSS"] = mib(status_kib(server.pid, "VmHWM"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait()
        log.close()
    first, total, lines, peak, _ = run_timed([binary, "queue", "list", "--config", config])
    row["offline list: first line"] = f"{first * 1000:.0f} ms"
    row["offline list: whole"] = f"{total:.2f} s"
    row["offline list: peak RSS"] = mib(peak)
    for action in ("hold", "release"):
        _, total, _, peak, last = run_timed([binary, "queue", action, "--all", "--config", config])
        row[f"offline {action} --all"] = f"{total:.2f} s, {mib(peak)} ({last})"
    return row


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    spool = os.path.abspath(sys.argv[1])
    work = os.path.dirname(spool)
    builds = [arg.split("=", 1) for arg in sys.argv[2:]]
    rows = {}
    for name, binary in builds:
        print(f"== {name}: {binary}", file=sys.stderr)
        rows[name] = measure(name, binary, spool, work)
        for key, value in rows[name].items():
            print(f"  {key}: {value}", file=sys.stderr)
    keys = list(rows[builds[0][0]].keys())
    width = max(len(k) for k in keys)
    print(f"| {'':<{width}} | " + " | ".join(name for name, _ in builds) + " |")
    print(f"|{'-' * (width + 2)}|" + "|".join("---" for _ in builds) + "|")
    for key in keys:
        print(f"| {key:<{width}} | " + " | ".join(rows[name].get(key, "") for name, _ in builds) + " |")


if __name__ == "__main__":
    main()
