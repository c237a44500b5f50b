#!/usr/bin/env python3
"""Turn `tidings-bench --json` results into docs/benchmarks.md, docs/benchmarks.json and the plots.

Called by bench/run. Reads RESULTS/<scenario>.<system>.<run>.json (one JSON object each, the last
line of the file) and writes, per scenario and system, the median, min and max of each figure
over the runs; tables set Tidings beside every peer with the ratio Tidings/peer.

More results can be merged with --extra FILE (repeatable): JSON lines, each one run's value of
one figure, {"scenario": S, "system": Y, "metric": M, "value": V} with an optional "unit" and
"label". Several lines with the same scenario, system and metric are several runs. Their
scenarios get a table of their own (after the ones bench/run ran), with the same ratios.
"""

import argparse
import glob
import json
import math
import os
import platform
import re
import statistics
import sys
import time

SYSTEMS = ["tidings", "node-redis", "nats"]
SYSTEM_LABEL = {
    "tidings": "Tidings",
    "node-redis": "Node + Redis",
    "nats": "NATS",
    "pg_recvlogical": "pg_recvlogical",
    "polling-relay": "polling relay",
}
COLOR = {"tidings": "#d62728", "node-redis": "#2ca02c", "nats": "#1f77b4"}
OTHER_COLORS = ["#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]

# Figures shown in the tables, per kind of scenario: key, label, unit, which way is better
# ("higher", "lower" or None: no ratio).
SHOWN = {
    "fanout": [
        ("delivered_per_s", "messages delivered per second", "msg/s", "higher"),
        ("latency_p50_ms", "publish-to-receive latency p50", "ms", "lower"),
        ("latency_p99_ms", "latency p99", "ms", "lower"),
        ("latency_p999_ms", "latency p99.9", "ms", "lower"),
        ("latency_max_ms", "latency max", "ms", "lower"),
        ("ack_latency_p50_ms", "publish-to-ack latency p50 (Tidings: durable)", "ms", None),
        ("connect_secs", "time to connect and subscribe all", "s", "lower"),
        ("server_cpu_pct", "server CPU (100 = one core)", "%", None),
        ("loadgen_cpu_pct", "load generator CPU", "%", None),
        ("server_rss_kib", "server RSS at the end", "KiB", "lower"),
        ("delivered", "messages delivered", "msg", None),
        ("missing", "missing", "msg", None),
        ("duplicates", "duplicates", "msg", None),
        ("out_of_order", "out of order", "msg", None),
        ("disconnected", "subscribers disconnected", "", None),
        ("continuity_lost", "re-attaches with resumed: false", "", None),
        ("polls_per_s", "long-poll answers per second", "req/s", None),
        ("messages_per_poll", "messages per long-poll answer", "msg", None),
        ("poll_reconnects", "long-polls repeated on a new connection", "", None),
    ],
    "channels": [
        ("delivered_per_s", "messages delivered per second", "msg/s", "higher"),
        ("shared_latency_p50_ms", "shared channel: latency p50", "ms", "lower"),
        ("shared_latency_p99_ms", "shared channel: latency p99", "ms", "lower"),
        ("shared_latency_p999_ms", "shared channel: latency p99.9", "ms", "lower"),
        ("private_latency_p50_ms", "own channels: latency p50", "ms", "lower"),
        ("private_latency_p99_ms", "own channels: latency p99", "ms", "lower"),
        ("private_latency_p999_ms", "own channels: latency p99.9", "ms", "lower"),
        ("connect_secs", "time to connect and subscribe all (2 channels each)", "s", "lower"),
        ("server_cpu_pct", "server CPU (100 = one core)", "%", None),
        ("server_rss_kib", "server RSS at the end", "KiB", "lower"),
        ("published", "messages published", "msg", None),
        ("delivered", "messages delivered", "msg", None),
        ("missing", "missing", "msg", None),
        ("continuity_anomalies", "out of sequence", "", None),
        ("disconnected", "subscribers disconnected", "", None),
    ],
    "storm": [
        ("reconnect_p50_secs", "subscribed again, median subscriber", "s", "lower"),
        ("reconnect_all_secs", "subscribed again, all", "s", "lower"),
        ("caught_up_p50_secs", "caught up, median subscriber", "s", "lower"),
        ("caught_up_p99_secs", "caught up, p99 subscriber", "s", "lower"),
        ("caught_up_all_secs", "caught up, all", "s", "lower"),
        ("missed_per_subscriber", "messages missed per subscriber", "msg", None),
        ("missed", "messages missed, all subscribers", "msg", None),
        ("duplicates", "duplicates", "msg", None),
        ("continuity_lost", "resumes with resumed: false", "", None),
        ("server_cpu_pct", "server CPU (100 = one core)", "%", None),
        ("server_rss_kib", "server RSS at the end", "KiB", "lower"),
        ("failed", "subscribers that failed", "", None),
    ],
    "publish": [
        ("acked_per_s", "acknowledged (durable) messages per second", "msg/s", "higher"),
        ("latency_p50_ms", "request latency p50", "ms", "lower"),
        ("latency_p99_ms", "request latency p99", "ms", "lower"),
        ("latency_max_ms", "request latency max", "ms", "lower"),
        ("server_cpu_pct", "server CPU (100 = one core)", "%", None),
        ("loadgen_cpu_pct", "load generator CPU", "%", None),
        ("errors", "failed requests", "", None),
    ],
    "idle": [
        ("rss_per_connection_kib", "server RSS per connection", "KiB", "lower"),
        ("server_rss_before_kib", "server RSS before", "KiB", None),
        ("server_rss_after_kib", "server RSS with all connections open", "KiB", "lower"),
        ("connects_per_s", "connects per second", "conn/s", "higher"),
        ("closed_early", "connections closed during the wait", "", None),
    ],
    "postgres-throughput": [
        ("rows_per_s", "outbox rows per second, first row out to last", "rows/s", "higher"),
        ("rows", "rows", "", None),
    ],
    "postgres-latency": [
        ("rate_achieved", "insert rate achieved", "rows/s", None),
        ("latency_p50_ms", "commit-to-client latency p50", "ms", "lower"),
        ("latency_p90_ms", "latency p90", "ms", "lower"),
        ("latency_p99_ms", "latency p99", "ms", "lower"),
        ("latency_p999_ms", "latency p99.9", "ms", "lower"),
        ("latency_max_ms", "latency max", "ms", "lower"),
        ("received", "rows received", "", None),
        ("missing", "rows missing", "", None),
    ],
    "catchup": [
        ("replay_msgs_per_s", "messages replayed per second", "msg/s", "higher"),
        ("replay_secs", "time to receive all", "s", "lower"),
        ("first_message_ms", "time to first message", "ms", "lower"),
        ("fill_msgs_per_s", "fill rate (REST, batches of 1000)", "msg/s", "higher"),
        ("server_cpu_pct", "server CPU (100 = one core)", "%", None),
        ("missing", "missing", "msg", None),
        ("duplicates", "duplicates", "msg", None),
        ("out_of_order", "out of order", "msg", None),
    ],
}

DESCRIPTION = {
    "fanout": "N WebSocket subscribers on one channel; one publisher sends 100-byte messages at a "
    "fixed rate, each stamped with its send instant and a sequence number; every subscriber checks "
    "continuity (Tidings: serials; peers: the sequence number) and records publish-to-receive "
    "latency. Tidings' publisher uses a WebSocket and waits for durable acks (at most 1,000 in "
    "flight); Node + Redis' publisher sends `PUBLISH` to Redis; NATS' sends `PUB` on its TCP port.",
    "fanout-sse": "N Server-Sent Events subscribers (`GET /v1/sse?channel=C`, one streaming "
    "response each, read over a raw HTTP/1.1 connection) on one channel; one WebSocket publisher "
    "sends at a fixed rate, each message stamped with its send instant; every subscriber checks "
    "serials (missing, duplicate, out of order) and records publish-to-receive latency.",
    "fanout-poll": "N long-polling subscribers on one channel, each looping on "
    "`GET /v1/poll?channel=C&from=NEXT&wait=25s` over its own keep-alive connection (the first "
    "poll, without `from`, answers at once with the position); one WebSocket publisher sends at "
    "a fixed rate, each message stamped with its send instant; every subscriber checks serials "
    "(missing, duplicate, out of order) and records publish-to-receive latency.",
    "channels": "N WebSocket subscribers, each subscribed to a channel of its own and to one "
    "channel they all share (N + 1 channels). One publisher sends every 200th message to the "
    "shared channel and the others to the own channels in turn; every subscriber checks both "
    "channels' sequence numbers.",
    "storm": "N WebSocket subscribers on one channel while a publisher sends at a fixed rate. After "
    "a warm-up every subscriber drops its connection at the same instant and reconnects at once "
    "(at most 200 connects in flight, as in the other scenarios). *Subscribed again*: the "
    "subscription is confirmed again. *Caught up*: the subscriber holds every message it can "
    "get up to the one published last when its subscription was back. Tidings subscribers resume "
    "from their last serial (`attach` with `from`) and miss nothing, so for them that includes "
    "replaying what was published while they were away; **the peers have no resume**: nothing "
    "published while a subscriber was away can reach it, so for them caught up is the moment they "
    "are subscribed again, and what they missed is counted (messages missed).",
    "publish": "C concurrent REST publishers (`POST /v1/channels/{c}/messages`, one 100-byte "
    "message per request, keep-alive), each waiting for its 201 before the next request; "
    "a 201 means the message is durable.",
    "idle": "N WebSocket connections doing nothing (Tidings' send an application ping per "
    "heartbeat interval, as its idle timeout requires; NATS' answer the server's PINGs); with "
    "`--attach` each is subscribed to one shared channel. The server's resident memory (Node + "
    "Redis: both processes) before opening them and 5 s after all are open.",
    "postgres-throughput": "The Postgres outbox on one throwaway cluster (`fsync = off`, so the "
    "figures are the relay path, not the disk; Tidings' own log syncs as in production): the rows "
    "are committed first (transactions of 100 outbox rows) while nothing reads, then each system "
    "drains them alone from the same WAL, timed from the first row out to the last. Tidings: its "
    "Postgres connector (streaming logical replication, pgoutput), every row durable in its log. "
    "pg_recvlogical: Postgres's own client decoding the same publication from a slot of its own, "
    "doing nothing with the rows (the floor). Polling relay: `LISTEN`/`NOTIFY` plus `SELECT ... "
    "WHERE id > $last ORDER BY id LIMIT 1000`, each page published over REST to a Tidings server "
    "of its own, the way most outbox relays work.",
    "postgres-latency": "The same three readers run together while 4 connections insert "
    "single-row autocommit outbox transactions at a fixed rate; each row carries the instant "
    "its INSERT was sent, and the figure is the time until the reader has it (Tidings and the "
    "relay: a WebSocket client subscribed to the channel; pg_recvlogical: the decoded row in its "
    "output).",
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
    if v is None:
        return "—"
    if isinstance(v, float):
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def is_num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Data:
    """values[scenario][system][metric] = [value per run], plus what describes them."""

    def __init__(self):
        self.values = {}
        self.kind = {}
        self.transport = {}
        self.problems = {}
        self.commands = {}
        self.skipped = {}
        self.units = {}
        self.labels = {}
        self.order = []

    def add(self, scenario, system, metric, value):
        if scenario not in self.values:
            self.values[scenario] = {}
            self.order.append(scenario)
        self.values[scenario].setdefault(system, {}).setdefault(metric, []).append(value)

    def systems(self, scenario):
        have = set(self.values.get(scenario, {})) | {
            s for (sc, s) in self.skipped if sc == scenario
        }
        known = [s for s in SYSTEMS if s in have]
        return known + sorted(have - set(SYSTEMS))

    def vals(self, scenario, system, metric):
        return self.values.get(scenario, {}).get(system, {}).get(metric, [])

    def median(self, scenario, system, metric):
        v = self.vals(scenario, system, metric)
        return statistics.median(v) if v else None


def load(a):
    d = Data()
    with open(a.commands) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) == 3:
                d.commands[(parts[0], parts[1])] = parts[2]
                if parts[0] not in d.values:
                    d.values[parts[0]] = {}
                    d.order.append(parts[0])
    if a.skipped and os.path.exists(a.skipped):
        with open(a.skipped) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3:
                    d.skipped[(parts[0], parts[1])] = parts[2]
                    if parts[0] not in d.values:
                        d.values[parts[0]] = {}
                        d.order.append(parts[0])
    for (name, system) in list(d.commands):
        d.values[name].setdefault(system, {})
        probs = d.problems.setdefault((name, system), [])
        paths = sorted(glob.glob(os.path.join(a.results, f"{name}.{system}.*.json")))
        for path in paths:
            try:
                with open(path) as f:
                    obj = json.loads(f.read().strip().splitlines()[-1])
            except (OSError, ValueError, IndexError):
                probs.append(f"{os.path.basename(path)}: no JSON result (crashed?)")
                continue
            d.kind.setdefault(name, obj.get("scenario", name.split("-")[0]))
            d.transport.setdefault(name, obj.get("transport", "websocket"))
            for k, v in obj.items():
                if is_num(v):
                    d.add(name, system, k, v)
            for p in obj.get("problems", []):
                probs.append(f"{os.path.basename(path)}: {p}")
        if not paths:
            probs.append("no run produced a result")
    for path in a.extra or []:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    rec = json.loads(line)
                    sc, sy, me, v = rec["scenario"], rec["system"], rec["metric"], rec["value"]
                except (ValueError, KeyError, TypeError) as e:
                    raise SystemExit(f"report.py: {path}:{n}: not a result record ({e})")
                if not is_num(v):
                    continue
                d.add(sc, sy, me, v)
                d.kind.setdefault(sc, rec.get("kind", "extra"))
                if rec.get("unit"):
                    d.units[me] = rec["unit"]
                if rec.get("label"):
                    d.labels[me] = rec["label"]
    return d


def ratio(t, p):
    if t is None or p is None or p == 0:
        return None
    return t / p


def fmt_ratio(r):
    if r is None:
        return "—"
    if r >= 10:
        return f"{r:.1f}×"
    if r >= 0.1:
        return f"{r:.2f}×"
    return f"{r:.2g}×"


def cell(d, scenario, system, key, unit):
    vals = d.vals(scenario, system, key)
    if not vals:
        return "—"
    med = statistics.median(vals)
    if all(isinstance(v, int) for v in vals) and med == int(med):
        med = int(med)
    u = f" {unit}" if unit else ""
    if len(vals) == 1 or min(vals) == max(vals):
        return f"{fmt(med)}{u}"
    return f"{fmt(med)}{u} ({fmt(min(vals))}–{fmt(max(vals))})"


def table(d, scenario, shown, rows):
    """A markdown table: one row per figure, one column per system, then Tidings/peer ratios.
    Appends the ratios to `rows` (benchmarks.json)."""
    systems = d.systems(scenario)
    peers = [s for s in systems if s != "tidings"] if "tidings" in systems else []
    head = ["figure"] + [SYSTEM_LABEL.get(s, s) for s in systems]
    head += [f"Tidings ÷ {SYSTEM_LABEL.get(p, p)}" for p in peers]
    out = ["| " + " | ".join(head) + " |", "|---" + "|---:" * (len(head) - 1) + "|"]
    for key, label, unit, better in shown:
        if not any(d.vals(scenario, s, key) for s in systems):
            continue
        line = [label] + [cell(d, scenario, s, key, unit) for s in systems]
        for p in peers:
            r = ratio(d.median(scenario, "tidings", key), d.median(scenario, p, key))
            if better is None:
                r = None
            line.append(fmt_ratio(r))
            if r is not None:
                rows.append({
                    "scenario": scenario, "system": "tidings",
                    "metric": f"{key}_ratio_to_{p}",
                    "median": round(r, 4), "min": round(r, 4), "max": round(r, 4),
                })
        out.append("| " + " | ".join(line) + " |")
    return out


def compare_with_websocket(d, name, rows):
    """For `X-sse` / `X-poll`, a line comparing with the Tidings WebSocket scenario `X`."""
    m = re.match(r"^(fanout-.+)-(sse|poll)$", name)
    if not m:
        return None
    base, transport = m.group(1), m.group(2)
    d_ws = d.median(base, "tidings", "delivered_per_s")
    d_o = d.median(name, "tidings", "delivered_per_s")
    if not d_ws or d_o is None:
        return None
    r = d_o / d_ws
    rows.append({
        "scenario": name, "system": "tidings", "metric": "delivered_per_s_ratio_to_websocket",
        "median": round(r, 4), "min": round(r, 4), "max": round(r, 4),
    })
    label = {"sse": "SSE", "poll": "long-poll"}[transport]
    parts = [
        f"**{label} against WebSocket (`{base}`, medians):** delivered msg/s "
        f"{fmt(d_o)} vs {fmt(d_ws)} = {r:.1%} of WebSocket"
    ]
    for key, lbl in (("latency_p50_ms", "p50"), ("latency_p99_ms", "p99")):
        x, y = d.median(name, "tidings", key), d.median(base, "tidings", key)
        if x is not None and y is not None:
            parts.append(f"latency {lbl} {fmt(x)} ms vs {fmt(y)} ms")
    return "; ".join(parts) + "."


# --- SVG, by hand ----------------------------------------------------------------------------


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks = [round(start, 10)]
    while ticks[-1] < hi - step * 0.001:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def si(v):
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def svg_chart(title, xlabel, ylabel, series, logy=False, note=""):
    """series: [(label, color, dash, [(x, y), ...])]. Lines with markers; log or linear y."""
    W, H, L, R, T, B = 760, 440, 70, 200, 40, 60
    pts = [(x, y) for _, _, _, p in series for (x, y) in p if y is not None and y > 0]
    if not pts:
        return None
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    x0, x1 = 0.0, max(xs) * 1.05
    xt = nice_ticks(x0, x1)
    x1 = max(x1, xt[-1])
    if logy:
        y0 = 10 ** math.floor(math.log10(min(ys)))
        y1 = 10 ** math.ceil(math.log10(max(ys)))
        if y1 <= y0:
            y1 = y0 * 10
        yt = []
        v = y0
        while v <= y1 * 1.0001:
            yt.append(v)
            v *= 10
        fy = lambda y: T + (H - T - B) * (1 - (math.log10(y) - math.log10(y0)) / (math.log10(y1) - math.log10(y0)))
    else:
        y0 = 0.0
        yt = nice_ticks(0, max(ys) * 1.05)
        y1 = yt[-1]
        fy = lambda y: T + (H - T - B) * (1 - (y - y0) / (y1 - y0))
    fx = lambda x: L + (W - L - R) * (x - x0) / (x1 - x0)
    o = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
        'font-family="sans-serif" font-size="12">',
        f'<rect width="{W}" height="{H}" fill="white"/>',
        f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">{esc(title)}</text>',
    ]
    for t in xt:
        X = fx(t)
        o.append(f'<line x1="{X:.1f}" y1="{T}" x2="{X:.1f}" y2="{H - B}" stroke="#e5e5e5"/>')
        o.append(f'<text x="{X:.1f}" y="{H - B + 16}" text-anchor="middle">{si(t)}</text>')
    for t in yt:
        Y = fy(t)
        o.append(f'<line x1="{L}" y1="{Y:.1f}" x2="{W - R}" y2="{Y:.1f}" stroke="#e5e5e5"/>')
        o.append(f'<text x="{L - 6}" y="{Y + 4:.1f}" text-anchor="end">{si(t)}</text>')
    o.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" stroke="#333"/>')
    o.append(f'<text x="{(L + W - R) / 2}" y="{H - 22}" text-anchor="middle">{esc(xlabel)}</text>')
    o.append(f'<text transform="translate(16 {(T + H - B) / 2}) rotate(-90)" text-anchor="middle">{esc(ylabel)}</text>')
    if note:
        o.append(f'<text x="{L}" y="{H - 6}" font-size="10" fill="#555">{esc(note)}</text>')
    ly = T + 6
    for label, color, dash, p in series:
        p = [(x, y) for (x, y) in p if y is not None and y > 0]
        if not p:
            continue
        da = f' stroke-dasharray="{dash}"' if dash else ""
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in p)
        o.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{da}/>')
        for x, y in p:
            o.append(f'<circle cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="3" fill="{color}"/>')
        o.append(f'<line x1="{W - R + 12}" y1="{ly}" x2="{W - R + 40}" y2="{ly}" stroke="{color}" stroke-width="2"{da}/>')
        o.append(f'<text x="{W - R + 46}" y="{ly + 4}">{esc(label)}</text>')
        ly += 18
    o.append("</svg>")
    return "\n".join(o) + "\n"


def fanout_series(d):
    """{"fanout-1k": [(rate, scenario), ...]} for the stepped WebSocket fanout scenarios."""
    series = {}
    for name in d.order:
        m = re.match(r"^(fanout-(\d+)k)-(\d+)$", name)
        if m:
            series.setdefault(m.group(1), []).append((int(m.group(3)), name))
    for k in series:
        series[k].sort()
    return series


def series_section(d, key, steps, out_dir, md, plots):
    subs = key.split("-")[1]
    systems = [s for s in SYSTEMS if any(s in d.systems(n) for _, n in steps)]
    md.append(f"### Fan-out, {subs} subscribers, stepped publish rate\n")
    md.append(
        "Medians per step (details and min/max in the scenario sections below). A system is not "
        "run at the higher steps once its p99 passed 1 s, it delivered under 90 % of what was "
        "offered, or it reported problems.\n"
    )
    head = ["publish rate", "offered msg/s"]
    for s in systems:
        lab = SYSTEM_LABEL[s]
        head += [f"{lab} delivered msg/s", f"{lab} p50 / p99 / p99.9 ms", f"{lab} CPU %"]
    md.append("| " + " | ".join(head) + " |")
    md.append("|---" + "|---:" * (len(head) - 1) + "|")
    for rate, name in steps:
        subs_n = next((d.median(name, s, "subscribers") for s in systems if d.median(name, s, "subscribers")), None)
        offered = rate * subs_n if subs_n else None
        line = [f"{rate} msg/s", fmt(offered)]
        for s in systems:
            if (name, s) in d.skipped:
                line += ["not run", "(past its limit)", ""]
                continue
            dl = d.median(name, s, "delivered_per_s")
            lat = [d.median(name, s, k) for k in ("latency_p50_ms", "latency_p99_ms", "latency_p999_ms")]
            bad = " ⚠" if any(p for p in d.problems.get((name, s), [])) else ""
            line += [fmt(dl) + bad, " / ".join(fmt(x) for x in lat), fmt(d.median(name, s, "server_cpu_pct"))]
        md.append("| " + " | ".join(line) + " |")
    md.append("\n⚠ = a run of that step reported problems (listed in its section).\n")
    series = []
    for s in systems:
        for q, lbl, dash in (("latency_p50_ms", "p50", ""), ("latency_p99_ms", "p99", "6 3"), ("latency_p999_ms", "p99.9", "2 3")):
            p = [(d.median(n, s, "delivered_per_s"), d.median(n, s, q)) for _, n in steps
                 if d.median(n, s, "delivered_per_s") is not None]
            series.append((f"{SYSTEM_LABEL[s]} {lbl}", COLOR[s], dash, p))
    svg = svg_chart(
        f"Fan-out to {subs} subscribers: latency against throughput",
        "messages delivered per second (median of runs)", "publish-to-receive latency, ms (log)",
        series, logy=True, note="each point is one publish-rate step; 100-byte messages, loopback, server on one core",
    )
    if svg:
        fname = f"bench-{key}-latency.svg"
        with open(os.path.join(out_dir, fname), "w") as f:
            f.write(svg)
        plots.append(fname)
        md.append(f"![Latency against throughput, {subs} subscribers]({fname})\n")


def idle_plot(d, out_dir, md, plots):
    points = {}
    for name in d.order:
        m = re.match(r"^idle-(\d+)k-attached$", name)
        if not m:
            continue
        for s in d.systems(name):
            n = d.median(name, s, "connections")
            before = d.median(name, s, "server_rss_before_kib")
            after = d.median(name, s, "server_rss_after_kib")
            if n and after is not None:
                pts = points.setdefault(s, {})
                if before is not None:
                    pts.setdefault(0, before / 1024)
                pts[n] = after / 1024
    if not points:
        return
    series = [(SYSTEM_LABEL.get(s, s), COLOR.get(s, "#555"), "", sorted(p.items())) for s, p in points.items()]
    svg = svg_chart(
        "Idle WebSocket connections (each subscribed): server memory",
        "open connections", "server RSS, MiB (Node + Redis: both)", series,
        note="0 = the freshly started server; medians of runs",
    )
    if svg:
        fname = "bench-idle-memory.svg"
        with open(os.path.join(out_dir, fname), "w") as f:
            f.write(svg)
        plots.append(fname)
        md.append(f"![Memory against connections]({fname})\n")


# --- Goals ---------------------------------------------------------------------------------


def within_limits(d, name, system):
    """The step ran without problems, its p99 stayed within 1 s and it delivered at least 90 % of
    what was offered (the rule bench/run steps the rate up by)."""
    if d.median(name, system, "delivered_per_s") is None or any(d.problems.get((name, system), [])):
        return False
    p99 = d.median(name, system, "latency_p99_ms")
    got = d.median(name, system, "delivered_per_s")
    offered = (d.median(name, system, "rate") or 0) * (d.median(name, system, "subscribers") or 0)
    return (p99 is None or p99 <= 1000) and not (offered and got < 0.9 * offered)


def best_step(d, steps, system):
    """(scenario, delivered msg/s, p99, within limits): the step with the most delivered msg/s
    among those within limits, else the lowest step the system ran."""
    best = None
    for _, name in steps:
        if not within_limits(d, name, system):
            continue
        dl = d.median(name, system, "delivered_per_s")
        if best is None or dl > best[1]:
            best = (name, dl, d.median(name, system, "latency_p99_ms"), True)
    if best is None:
        for _, name in steps:
            dl = d.median(name, system, "delivered_per_s")
            if dl is not None:
                return (name, dl, d.median(name, system, "latency_p99_ms"), False)
    return best


def goals(d, md, rows):
    series = fanout_series(d)
    steps = series.get("fanout-10k")
    lines = []
    if steps:
        t = best_step(d, steps, "tidings")
        nr = best_step(d, steps, "node-redis")
        na = best_step(d, steps, "nats")
        desc = lambda b: (f"{fmt(b[1])} msg/s at p99 {fmt(b[2])} ms (`{b[0]}`"
                          + ("" if b[3] else "; no step within limits, its lowest step") + ")") if b else "no result"
        if t and nr:
            r = t[1] / nr[1]
            verdict = "met" if r >= 3 else "not met"
            lines.append(f"| Fan-out at 10,000 subscribers: ≥ 3× the delivered msg/s of Node + Redis "
                         f"| Tidings {desc(t)}; Node + Redis {desc(nr)} | {r:.2f}× | {verdict} |")
            rows.append({"scenario": "fanout-10k", "system": "tidings",
                         "metric": "best_delivered_per_s_ratio_to_node-redis",
                         "median": round(r, 4), "min": round(r, 4), "max": round(r, 4)})
        if t and na:
            r = t[1] / na[1]
            lower = t[2] is not None and na[2] is not None and t[2] < na[2]
            verdict = "met" if r > 1 and lower else "not met"
            lines.append(f"| Fan-out at 10,000 subscribers: ahead of NATS at a lower p99 "
                         f"| Tidings {desc(t)}; NATS {desc(na)} | {r:.2f}× | {verdict} |")
            rows.append({"scenario": "fanout-10k", "system": "tidings",
                         "metric": "best_delivered_per_s_ratio_to_nats",
                         "median": round(r, 4), "min": round(r, 4), "max": round(r, 4)})
    for name in d.order:
        if not re.match(r"^idle-\d+k-attached$", name):
            continue
        t = d.median(name, "tidings", "rss_per_connection_kib")
        peers = {p: d.median(name, p, "rss_per_connection_kib") for p in ("node-redis", "nats")}
        peers = {p: v for p, v in peers.items() if v is not None}
        if t is None or not peers:
            continue
        verdict = "met" if all(t < v for v in peers.values()) else "not met"
        others = "; ".join(f"{SYSTEM_LABEL[p]} {fmt(v)} KiB" for p, v in peers.items())
        lo = min(peers.values())
        lines.append(f"| Idle memory per connection below every peer's (`{name}`) "
                     f"| Tidings {fmt(t)} KiB; {others} | {fmt_ratio(ratio(t, lo))} of the lowest peer | {verdict} |")
    # The Postgres connector's goals (issue 4), from the postgres scenarios.
    t = d.median("postgres-throughput", "tidings", "rows_per_s")
    floor = d.median("postgres-throughput", "pg_recvlogical", "rows_per_s")
    if t is not None:
        lines.append(f"| Postgres outbox: ≥ 50,000 rows/s (issue 4) | Tidings {fmt(t)} rows/s "
                     f"| — | {'met' if t >= 50000 else 'not met'} |")
    if t is not None and floor:
        r = t / floor
        lines.append(f"| Postgres outbox: ≥ 70 % of pg_recvlogical's rate (issue 4) "
                     f"| Tidings {fmt(t)} rows/s; pg_recvlogical {fmt(floor)} rows/s "
                     f"| {r:.2f}× | {'met' if r >= 0.7 else 'not met'} |")
    p50 = d.median("postgres-latency-1000", "tidings", "latency_p50_ms")
    if p50 is not None:
        relay = d.median("postgres-latency-1000", "polling-relay", "latency_p50_ms")
        beside = f"; polling relay {fmt(relay)} ms" if relay is not None else ""
        lines.append(f"| Postgres outbox: commit-to-client p50 ≤ 5 ms at 1,000 rows/s (issue 4) "
                     f"| Tidings {fmt(p50)} ms{beside} | {fmt_ratio(ratio(p50, relay))} of the relay "
                     f"| {'met' if p50 <= 5 else 'not met'} |")
    if lines:
        md.append("## Goals (issues 7 and 4)\n")
        md.append("Computed from the figures below. For fan-out, each system's figure is its step of "
                  "the 10k series with the most delivered msg/s *within limits*: no problem reported, "
                  "p99 at most 1 s, at least 90 % of the offered deliveries made (a system past its "
                  "limit at every step it ran is shown at its lowest step, and says so).\n")
        md.append("| goal | measured (medians) | Tidings ÷ peer | verdict |")
        md.append("|---|---|---:|---|")
        md.extend(lines)
        md.append("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--commands", required=True)
    ap.add_argument("--skipped")
    ap.add_argument("--extra", action="append", help="JSON-lines result records to merge")
    ap.add_argument("--out", required=True)
    ap.add_argument("--runs", type=int, required=True)
    ap.add_argument("--server-version", default="unknown")
    ap.add_argument("--commit", default="unknown")
    ap.add_argument("--rustc", default="unknown")
    ap.add_argument("--peers", default="unknown")
    ap.add_argument("--nofile", default="unknown")
    ap.add_argument("--pinning", default="")
    ap.add_argument("--invocation", default="bench/run")
    ap.add_argument("--load", default="unknown", help="1-minute load average at the start")
    ap.add_argument("--load-end", default="unknown", help="1-minute load average at the end")
    ap.add_argument("--note", action="append", default=[], help="a line for the setup list")
    ap.add_argument("--date", help="when the runs were made (default: now)")
    ap.add_argument("--save", help="copy the inputs and arguments here, for --rerun")
    ap.add_argument("--rerun", help="write the report again from a --save directory")
    if "--rerun" in sys.argv:
        i = sys.argv.index("--rerun")
        saved = sys.argv[i + 1]
        with open(os.path.join(saved, "args.json")) as f:
            argv = json.load(f)
        rest = sys.argv[1:i] + sys.argv[i + 2:]
        a = ap.parse_args(argv + rest)
        a.results = os.path.join(saved, "results")
        a.commands = os.path.join(saved, "commands.tsv")
        a.skipped = os.path.join(saved, "skipped.tsv")
        a.extra = [os.path.join(saved, os.path.basename(e)) for e in (a.extra or [])]
    else:
        a = ap.parse_args()
        if not a.date:
            a.date = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if a.save:
        save(a)

    d = load(a)
    os.makedirs(a.out, exist_ok=True)
    rows = []  # benchmarks.json
    md = []
    plots = []
    m = machine()
    md.append("# Benchmarks\n")
    md.append(
        "Generated by `bench/run` (load generator: the `tidings-bench` crate in `bench/`; peers in "
        "`bench/peers/`). Do not edit by hand; run the script again.\n"
    )
    md.append("## Setup\n")
    md.append(f"- Date: {a.date}")
    md.append(
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB memory, "
        f"Linux {m['kernel']}; 1-minute load average {a.load} at the start, {a.load_end} at the end"
        + (" (other work was running on this machine: figures are skewed by it)"
           if _float(a.load) > 0.5 or _float(a.load_end) > 1.5 else "")
    )
    md.append(f"- Tidings: `{a.server_version}`, commit {a.commit}; {a.rustc}; release build; "
              "configuration `bench/tidings.toml` (the defaults, with `limits.publish_rate` raised "
              "so one publisher connection may exceed 1,000 msg/s)")
    md.append(
        f"- Peers: {a.peers}. Node + Redis is `bench/peers/node-redis/server.js` (one Redis "
        "SUBSCRIBE per channel, a loop over the channel's sockets per message); NATS runs "
        "`bench/peers/nats/nats.conf` (defaults plus the WebSocket listener). Both are core pub/sub "
        "without history, where every Tidings message is written to its durable log before fan-out."
    )
    md.append(
        f"- Placement: everything on the same machine over loopback; {a.pinning}"
    )
    md.append(f"- Open files limit: {a.nofile} (the largest idle scenario is sized to fit it)")
    md.append(
        f"- Each scenario ran {a.runs} times per system, each run against freshly started server "
        "processes; tables give the median with (min–max) over the runs."
    )
    for n in a.note:
        md.append(f"- {n}")
    md.append(f"- Command: `{a.invocation}`\n")

    goals(d, md, rows)

    series = fanout_series(d)
    if series or any(re.match(r"^idle-\d+k-attached$", n) for n in d.order):
        md.append("## Overview\n")
        for key in sorted(series, key=lambda k: int(k.split("-")[1][:-1])):
            series_section(d, key, series[key], a.out, md, plots)
        if any(re.match(r"^idle-\d+k-attached$", n) for n in d.order):
            md.append("### Memory against connections\n")
            idle_plot(d, a.out, md, plots)

    for name in d.order:
        kind = d.kind.get(name, name.split("-")[0])
        systems = d.systems(name)
        md.append(f"## {name}\n")
        transport = d.transport.get(name, "websocket")
        desc = f"{kind}-{transport}" if f"{kind}-{transport}" in DESCRIPTION else kind
        if desc in DESCRIPTION:
            md.append(DESCRIPTION[desc] + "\n")
        cmds = [(s, d.commands[(name, s)]) for s in systems if (name, s) in d.commands]
        if cmds:
            md.append("Command per run:\n")
            for s, c in cmds:
                md.append(f"- {SYSTEM_LABEL.get(s, s)}: `{c}`")
            md.append("")
        shown = SHOWN.get(kind)
        if shown is None:
            metrics = []
            for s in systems:
                for k in d.values.get(name, {}).get(s, {}):
                    if k not in metrics:
                        metrics.append(k)
            shown = [(k, d.labels.get(k, k), d.units.get(k, ""), None) for k in metrics]
        if any(d.values.get(name, {}).get(s) for s in systems):
            md.extend(table(d, name, shown, rows))
            md.append("")
        else:
            md.append("No run produced a result.\n")
        for s in systems:
            if (name, s) in d.skipped:
                md.append(f"- {SYSTEM_LABEL.get(s, s)}: {d.skipped[(name, s)]}")
        line = compare_with_websocket(d, name, rows)
        if line:
            md.append(line + "\n")
        problems = [(s, p) for s in systems for p in d.problems.get((name, s), [])]
        if problems:
            md.append("\nProblems reported:\n")
            for s, p in problems:
                md.append(f"- {SYSTEM_LABEL.get(s, s)}: {p}")
            md.append("")
        elif any((name, s) in d.commands for s in systems):
            md.append("\nEvery run completed without a problem"
                      + (" (no message missing, duplicated or out of order)." if kind in ("fanout", "catchup", "channels") else ".")
                      + "\n")
        # Every numeric figure goes to the JSON, not just the ones in the table.
        for s in systems:
            for k, vals in d.values.get(name, {}).get(s, {}).items():
                rows.append({
                    "scenario": name, "system": s, "metric": k,
                    "median": statistics.median(vals), "min": min(vals), "max": max(vals),
                })

    with open(os.path.join(a.out, "benchmarks.md"), "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    with open(os.path.join(a.out, "benchmarks.json"), "w") as f:
        json.dump(rows, f, indent=1)
        f.write("\n")
    return 0


def save(a):
    """Keep the inputs and the arguments, so `report.py --rerun DIR` can write the report again
    (after changing this script, say) without running the benchmarks again."""
    import shutil

    d = a.save
    if os.path.abspath(a.results) != os.path.abspath(os.path.join(d, "results")):
        shutil.rmtree(d, ignore_errors=True)
        shutil.copytree(a.results, os.path.join(d, "results"))
        shutil.copy(a.commands, os.path.join(d, "commands.tsv"))
        if a.skipped and os.path.exists(a.skipped):
            shutil.copy(a.skipped, os.path.join(d, "skipped.tsv"))
        for e in a.extra or []:
            shutil.copy(e, os.path.join(d, os.path.basename(e)))
    argv = []
    for k in ("runs", "server_version", "commit", "rustc", "peers", "nofile", "pinning",
              "invocation", "load", "load_end", "date"):
        argv += [f"--{k.replace('_', '-')}", str(getattr(a, k))]
    for n in a.note:
        argv += ["--note", n]
    for e in a.extra or []:
        argv += ["--extra", os.path.basename(e)]
    argv += ["--results", "-", "--commands", "-", "--out", a.out]
    with open(os.path.join(d, "args.json"), "w") as f:
        json.dump(argv, f, indent=1)


def _float(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return 0.0


if __name__ == "__main__":
    sys.exit(main())
