#!/usr/bin/env python3
"""Turn `tidings-bench --json` results into docs/benchmarks.md and docs/benchmarks.json.

Called by bench/run; reads RESULTS/<scenario>.<run>.json (one JSON object each) and writes the
median, min and max of each figure over the runs.
"""

import argparse
import glob
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

# Figures shown in the tables, per kind of scenario, with a label and a unit.
SHOWN = {
    "fanout": [
        ("delivered_per_s", "messages delivered per second", "msg/s"),
        ("latency_p50_ms", "publish-to-receive latency p50", "ms"),
        ("latency_p99_ms", "latency p99", "ms"),
        ("latency_p999_ms", "latency p99.9", "ms"),
        ("latency_max_ms", "latency max", "ms"),
        ("ack_latency_p50_ms", "publish-to-ack latency p50", "ms"),
        ("connect_secs", "time to connect and attach all", "s"),
        ("server_cpu_pct", "server CPU (100 = one core)", "%"),
        ("loadgen_cpu_pct", "load generator CPU", "%"),
        ("server_rss_kib", "server RSS at the end", "KiB"),
        ("delivered", "messages delivered", "msg"),
        ("missing", "missing", "msg"),
        ("duplicates", "duplicates", "msg"),
        ("out_of_order", "out of order", "msg"),
        ("disconnected", "subscribers disconnected", ""),
        ("continuity_lost", "re-attaches with resumed: false", ""),
        ("polls_per_s", "long-poll answers per second", "req/s"),
        ("messages_per_poll", "messages per long-poll answer", "msg"),
        ("poll_reconnects", "long-polls repeated on a new connection", ""),
    ],
    "publish": [
        ("acked_per_s", "acknowledged (durable) messages per second", "msg/s"),
        ("latency_p50_ms", "request latency p50", "ms"),
        ("latency_p99_ms", "request latency p99", "ms"),
        ("latency_max_ms", "request latency max", "ms"),
        ("server_cpu_pct", "server CPU (100 = one core)", "%"),
        ("loadgen_cpu_pct", "load generator CPU", "%"),
        ("errors", "failed requests", ""),
    ],
    "idle": [
        ("rss_per_connection_kib", "server RSS per connection", "KiB"),
        ("server_rss_before_kib", "server RSS before", "KiB"),
        ("server_rss_after_kib", "server RSS with all connections open", "KiB"),
        ("connects_per_s", "connects per second", "conn/s"),
        ("closed_early", "connections closed during the wait", ""),
    ],
    "catchup": [
        ("replay_msgs_per_s", "messages replayed per second", "msg/s"),
        ("replay_secs", "time to receive all", "s"),
        ("first_message_ms", "time to first message", "ms"),
        ("fill_msgs_per_s", "fill rate (REST, batches of 1000)", "msg/s"),
        ("server_cpu_pct", "server CPU (100 = one core)", "%"),
        ("missing", "missing", "msg"),
        ("duplicates", "duplicates", "msg"),
        ("out_of_order", "out of order", "msg"),
    ],
}

DESCRIPTION = {
    "fanout": "N WebSocket subscribers attached to one channel; one WebSocket publisher sends "
    "at a fixed rate, each message stamped with its send instant; every subscriber checks "
    "serials (missing, duplicate, out of order) and records publish-to-receive latency.",
    "fanout-sse": "N Server-Sent Events subscribers (`GET /v1/sse?channel=C`, one streaming "
    "response each, read over a raw HTTP/1.1 connection) on one channel; one WebSocket publisher "
    "sends at a fixed rate, each message stamped with its send instant; every subscriber checks "
    "serials (missing, duplicate, out of order) and records publish-to-receive latency.",
    "fanout-poll": "N long-polling subscribers on one channel, each looping on "
    "`GET /v1/poll?channel=C&from=NEXT&wait=25s` over its own keep-alive connection (the first "
    "poll, without `from`, answers at once with the position); one WebSocket publisher sends at "
    "a fixed rate, each message stamped with its send instant; every subscriber checks serials "
    "(missing, duplicate, out of order) and records publish-to-receive latency.",
    "publish": "C concurrent REST publishers (`POST /v1/channels/{c}/messages`, one 100-byte "
    "message per request, keep-alive), each waiting for its 201 before the next request; "
    "a 201 means the message is durable.",
    "idle": "N WebSocket connections that only send a ping per heartbeat interval; the "
    "server's VmRSS before opening them and 5 s after all are open.",
    "catchup": "A fresh channel filled with M messages over REST, then one WebSocket client "
    "attaches `from` the epoch at serial 0 and receives all of them.",
}


def machine():
    info = {"nproc": os.cpu_count(), "kernel": platform.release()}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            info["cpu"] = m.group(1).strip() if m else "unknown"
    except OSError:
        info["cpu"] = "unknown"
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemTotal:\s*(\d+)\s*kB", f.read(), re.M)
            info["memory_gib"] = round(int(m.group(1)) / 1024 / 1024, 1) if m else None
    except OSError:
        info["memory_gib"] = None
    return info


def fmt(v):
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def median_of(results, key):
    vals = [r[key] for r in results if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def compare_with_websocket(name, runs, rows):
    """For `X-sse` / `X-poll`, a line comparing with the WebSocket scenario `X` (same size and
    rate), and the ratio as a JSON row."""
    m = re.match(r"^(fanout-.+)-(sse|poll)$", name)
    if not m or not runs.get(m.group(1)) or not runs.get(name):
        return None
    base, transport = m.group(1), m.group(2)
    ws, other = runs[base], runs[name]
    d_ws, d_o = median_of(ws, "delivered_per_s"), median_of(other, "delivered_per_s")
    if not d_ws or d_o is None:
        return None
    ratio = d_o / d_ws
    rows.append(
        {
            "scenario": name,
            "system": "tidings",
            "metric": "delivered_per_s_ratio_to_websocket",
            "median": round(ratio, 4),
            "min": round(ratio, 4),
            "max": round(ratio, 4),
        }
    )
    label = {"sse": "SSE", "poll": "long-poll"}[transport]
    parts = [
        f"**{label} against WebSocket (`{base}`, medians):** delivered msg/s "
        f"{fmt(d_o)} vs {fmt(d_ws)} = {ratio:.1%} of WebSocket"
    ]
    for key, lbl in (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")):
        a, b = median_of(other, key), median_of(ws, key)
        if a is not None and b is not None:
            parts.append(f"latency {lbl} {fmt(a)} ms vs {fmt(b)} ms")
    return "; ".join(parts) + "."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--commands", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--server-version", default="unknown")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--rustc", default="unknown")
    ap.add_argument("--pinning", default="")
    ap.add_argument("--invocation", default="bench/run")
    ap.add_argument("--load", default="unknown", help="1-minute load average at the start")
    a = ap.parse_args()

    commands = {}
    order = []
    with open(a.commands) as f:
        for line in f:
            if "\t" in line:
                name, cmd = line.rstrip("\n").split("\t", 1)
                commands[name] = cmd
                order.append(name)

    runs = {}  # scenario name -> list of result objects
    broken = {}  # scenario name -> list of problems
    for name in order:
        runs[name] = []
        broken[name] = []
        for path in sorted(glob.glob(os.path.join(a.results, f"{name}.*.json"))):
            try:
                with open(path) as f:
                    obj = json.loads(f.read().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                broken[name].append(f"{os.path.basename(path)}: no JSON result (crashed?)")
                continue
            runs[name].append(obj)
            for p in obj.get("problems", []):
                broken[name].append(f"{os.path.basename(path)}: {p}")

    rows = []  # benchmarks.json
    md = []
    m = machine()
    md.append("# Benchmarks\n")
    md.append(
        "Generated by `bench/run` (load generator: the `tidings-bench` crate in `bench/`). "
        "Do not edit by hand; run the script again.\n"
    )
    md.append("## Setup\n")
    md.append(f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    md.append(
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB memory, "
        f"Linux {m['kernel']}; 1-minute load average at the start: {a.load}"
    )
    md.append(f"- Server: `{a.server_version}`, commit {a.commit}; {a.rustc}; release build")
    md.append(
        f"- Placement: server and load generator on the same machine over loopback; {a.pinning}"
    )
    md.append(
        f"- Each scenario ran {a.runs} times, each run against a freshly started server with an "
        "empty data directory; tables give the median with min and max over the runs."
    )
    md.append(
        "- Credentials: the subscribers' key in `TIDINGS_BENCH_KEY`, the fanout publisher's in "
        "`TIDINGS_BENCH_PUBLISHER_KEY` (the server limits connections per key)"
    )
    md.append(f"- Command: `{a.invocation}`\n")

    for name in order:
        results = runs[name]
        kind = results[0].get("scenario") if results else name.split("-")[0]
        md.append(f"## {name}\n")
        transport = results[0].get("transport", "websocket") if results else "websocket"
        desc = f"{kind}-{transport}" if f"{kind}-{transport}" in DESCRIPTION else kind
        if desc in DESCRIPTION:
            md.append(DESCRIPTION[desc] + "\n")
        md.append(f"Command per run: `{commands[name]}`\n")
        if not results:
            md.append("No run produced a result.\n")
        else:
            md.append(f"| figure | median | min | max |")
            md.append("|---|---:|---:|---:|")
            for key, label, unit in SHOWN.get(kind, []):
                vals = [r[key] for r in results if isinstance(r.get(key), (int, float))]
                if not vals:
                    continue
                med = statistics.median(vals)
                if all(isinstance(v, int) for v in vals) and med == int(med):
                    med = int(med)
                lo, hi = min(vals), max(vals)
                u = f" {unit}" if unit else ""
                md.append(f"| {label} | {fmt(med)}{u} | {fmt(lo)}{u} | {fmt(hi)}{u} |")
            md.append("")
            line = compare_with_websocket(name, runs, rows)
            if line:
                md.append(line + "\n")
            # Every numeric figure goes to the JSON, not just the ones in the table.
            keys = []
            for r in results:
                for k, v in r.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in keys:
                        keys.append(k)
            for k in keys:
                vals = [r[k] for r in results if isinstance(r.get(k), (int, float))]
                rows.append(
                    {
                        "scenario": name,
                        "system": "tidings",
                        "metric": k,
                        "median": statistics.median(vals),
                        "min": min(vals),
                        "max": max(vals),
                    }
                )
        if broken[name]:
            md.append("Problems reported:\n")
            for p in broken[name]:
                md.append(f"- {p}")
            md.append("")
        else:
            md.append(f"All {len(results)} runs: no message missing, duplicated or out of order; "
                      "no error.\n" if kind in ("fanout", "catchup") else
                      f"All {len(results)} runs completed without error.\n")

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "benchmarks.md"), "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    with open(os.path.join(a.out, "benchmarks.json"), "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
