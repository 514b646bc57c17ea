#!/usr/bin/env python3
"""Inject latency probe: N concurrent sessions, one message per connection.

Times the interval from the end of DATA (the final ".\r\n" written) to the
server's final reply, for every message, and prints throughput and latency
percentiles. Used by bench/inject.sh; needs only the Python standard library.

usage: latency.py HOST:PORT SESSIONS MESSAGES [SIZE]
"""
import asyncio
import sys
import time


async def read_reply(reader):
    """Reads one (possibly multi-line) SMTP reply; returns its last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if len(line) < 4 or line[3:4] != b"-":
            return line


async def one_message(host, port, body, latencies):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        greeting = await read_reply(reader)
        assert greeting.startswith(b"220"), greeting
        # PIPELINING (RFC 2920): EHLO is answered first, then the group.
        writer.write(b"EHLO bench.test\r\n")
        assert (await read_reply(reader)).startswith(b"250")
        writer.write(b"MAIL FROM:<bench@bench.test>\r\nRCPT TO:<sink@sink.test>\r\nDATA\r\n")
        for expected in (b"250", b"250", b"354"):
            reply = await read_reply(reader)
            assert reply.startswith(expected), reply
        writer.write(body)
        await writer.drain()
        start = time.perf_counter()
        reply = await read_reply(reader)
        latencies.append(time.perf_counter() - start)
        assert reply.startswith(b"250"), reply
        writer.write(b"QUIT\r\n")
        await writer.drain()
        await read_reply(reader)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except Exception:
            pass


async def worker(host, port, body, remaining, latencies, errors):
    while remaining[0] > 0:
        remaining[0] -= 1
        try:
            await one_message(host, port, body, latencies)
        except Exception as error:  # counted and reported, the run goes on
            errors.append(repr(error))


def make_body(size):
    """About `size` octets of CRLF lines, plus the end-of-data marker."""
    header = b"From: bench@bench.test\r\nTo: sink@sink.test\r\nSubject: latency probe\r\n\r\n"
    line = b"x" * 76 + b"\r\n"
    body = bytearray(header)
    while len(body) + len(line) <= size:
        body += line
    return bytes(body) + b".\r\n"


async def main():
    address, sessions, messages = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    size = int(sys.argv[4]) if len(sys.argv) > 4 else 4096
    host, port = address.rsplit(":", 1)
    body = make_body(size)
    latencies, errors, remaining = [], [], [messages]
    start = time.perf_counter()
    await asyncio.gather(*(worker(host, int(port), body, remaining, latencies, errors) for _ in range(sessions)))
    elapsed = time.perf_counter() - start
    latencies.sort()

    def percentile(p):
        if not latencies:
            return float("nan")
        return latencies[min(len(latencies) - 1, int(p / 100.0 * len(latencies)))] * 1000

    print(
        f"sessions={sessions} messages={len(latencies)} errors={len(errors)} "
        f"rate={len(latencies) / elapsed:.0f}/s p50_ms={percentile(50):.2f} "
        f"p90_ms={percentile(90):.2f} p99_ms={percentile(99):.2f} max_ms={percentile(100):.2f}"
    )
    if errors:
        print("first error:", errors[0], file=sys.stderr)


if __name__ == "__main__":
    asyncio.run(main())
