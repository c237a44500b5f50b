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
    "client-alone": "client alone (stand-in server)",
    "client-current-thread": "tidings-client ← Tidings, current-thread runtime",
    "client-multi-thread": "tidings-client ← Tidings, multi-thread runtime",
    "bare-websocket": "bare WebSocket reader ← Tidings",
    "js-sdk": "@tidings/client",
    "websocket": "WebSocket",
    "sse": "SSE",
    "poll": "long-polling",
}
# Column order: the systems, then the other measurements' "systems" in a reading order; any
# other name comes after these, sorted.
ORDER = SYSTEMS + [
    "pg_recvlogical", "polling-relay",
    "client-alone", "client-current-thread", "client-multi-thread", "bare-websocket",
    "websocket", "sse", "poll",
]
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
    "sdk-rust-receive": [
        ("msgs_per_s", "messages received per second", "msg/s", None),
        ("secs", "time to receive all", "s", None),
        ("messages", "messages", "", None),
        ("worker_threads", "runtime worker threads", "", None),
        ("fill_msgs_per_s", "fill rate (REST, batches of 1,000)", "msg/s", None),
    ],
    "sdk-js-first-message": [
        ("first_message_p50_ms", "connect() to first message, median of the connects", "ms", None),
        ("first_message_min_ms", "min", "ms", None),
        ("first_message_p90_ms", "p90", "ms", None),
        ("first_message_max_ms", "max", "ms", None),
        ("attempts", "connects per run", "", None),
    ],
    "sdk-js-bundle": [
        ("gzip_bytes", "minified and gzipped", "B", None),
        ("minified_bytes", "minified", "B", None),
        ("goal_bytes", "goal, minified and gzipped", "B", None),
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
    "mongodb-throughput": "Change events per second through the MongoDB connector, stage by "
    "stage, in one process (`examples/mongodb_throughput.rs`): the wire-level MongoDB test server "
    "(`tidings-mongo-testserver`), the unmodified `mongodb` driver, the connector, the server's "
    "source runner and its embedded SQLite log with an fsync per group commit, with the server's "
    "allocator (mimalloc). The inserts (an order of about 400 bytes of BSON) are in the oplog before "
    "each reader starts; the connector routes by `orders:{fullDocument.storeId}` over the channels "
    "with the normalized payload. The process uses every core "
    "(not pinned): the test server shares them with the connector, as a replica set on another "
    "machine would not. Each stage's share of the ceiling is its rate over the ceiling's in the same "
    "run. CPU: each kind of thread's CPU time during the stage over its wall time (100 % = one core; "
    "`tidings-log-wri` is the log's writer, `tokio-rt-worker` the connector, the driver, the test "
    "server and the runner together; kinds under 0.05 s are left out).",
    "mongodb-connector-cost": "The MongoDB connector's own cost per change event "
    "(`connectors/mongodb/benches/event.rs`, criterion): the event's BSON bytes as the driver "
    "receives them in a `getMore` reply, routed and shaped into the `Publish` the connector hands "
    "the server, one event per iteration, on one core. Criterion's median with its 95 % confidence "
    "interval, from one run of the bench (100 samples per configuration; warm-up and measurement "
    "shortened, see the command).",
    "sdk-rust-receive": "How many messages per second one Rust client (`clients/rust`, "
    "`examples/receive_rate.rs`) receives on one channel, with the serials checked. *Client alone*: "
    "a stand-in WebSocket server in the client's process, on the same thread (a current-thread "
    "runtime), sends `message` frames as fast as it can, so the figure is the client's own cost "
    "(parsing, duplicate check, delivery through the `Stream`) plus the stand-in's. *Against "
    "Tidings*: a fresh channel on the server is filled over REST with the same messages, then each "
    "reader receives all of them from serial 0 (catch-up from the log, the server's fastest path: "
    "no publisher in the loop), one reader after the other and after an untimed pass, timed from "
    "the attach to the last message: a bare WebSocket reader that only counts the frames (what the "
    "server and the socket deliver at most), then `tidings-client` on a current-thread runtime and "
    "on a multi-thread runtime (tokio's default; its workers follow the CPUs the process may use, "
    "one when pinned). The client runs on the load generator's CPU, the server on its own.",
    "sdk-js-first-message": "Time from `connect()` to the first message with the JS SDK "
    "(`clients/js/scripts/first-message.mjs`, the built `dist/`, on Node), per transport: a fresh "
    "client with an API key attaches a channel that holds one message (`rewind: 1`) and connects; "
    "the figure covers connection, authentication, attach, catch-up and delivery. Connects one "
    "after the other against a fresh Tidings server per run (Node on the load generator's CPU); "
    "each row is the median over the runs of that run's statistic.",
    "sdk-js-bundle": "The JS SDK as an app would ship it: `dist/index.js` bundled and minified by "
    "esbuild, then gzipped at level 9 (`clients/js/scripts/size.mjs`). Measured once: it depends on "
    "the build only.",
}

# examples/mongodb_throughput.rs's stages, in the order they run (the setup last): key, label.
MONGODB_STAGES = [
    ("ceiling", "ceiling: a bare driver client reading the raw events, no processing"),
    ("connector-alone", "connector alone: driver and conversion into publishes, handed to nobody"),
    ("runner-log-alone", "runner + log alone: the same publishes replayed into a fresh log, no MongoDB"),
    ("end-to-end", "**connector into the durable log, end to end**"),
    ("snapshot", "initial snapshot of as many existing documents into the log"),
    ("writes", "setup: inserts into the test server (in process, not a reader)"),
]
# Groups the connector made or the log committed, per stage: figure, label.
MONGODB_GROUPS = [("batches", "batches"), ("appends", "appends"), ("commits", "commits")]
# connectors/mongodb/benches/event.rs's configurations; `for_scale_*` are not the connector's.
CONNECTOR_COST_LABEL = {
    "insert_template_normalized": "insert, channel template, normalized payload",
    "update_template_normalized": "update (its delta and the looked-up document), template, normalized",
    "insert_template_raw": "insert, template, raw payload",
    "insert_fields_normalized": "insert, routed by pipeline fields (`_channel`, `_name`), normalized",
    "insert_template_canonical": "insert, template, normalized, canonical Extended JSON",
    "snapshot_document": "snapshot document (as `find` returns it), template, normalized",
    "for_scale_decode_to_document": "decoding the event to a `Document` (the connector does not)",
    "for_scale_server_payload_to_json_text": "the server's next step: the payload as JSON text",
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
        known = [s for s in ORDER if s in have]
        return known + sorted(have - set(ORDER))

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


def client_against_bare(d, name, rows):
    """For the Rust client against Tidings: its rate as a share of the bare reader's."""
    bare = d.median(name, "bare-websocket", "msgs_per_s")
    if not bare:
        return None
    parts = []
    for s in ("client-current-thread", "client-multi-thread"):
        v = d.median(name, s, "msgs_per_s")
        if v is None:
            continue
        r = v / bare
        rows.append({"scenario": name, "system": s, "metric": "msgs_per_s_ratio_to_bare-websocket",
                     "median": round(r, 4), "min": round(r, 4), "max": round(r, 4)})
        parts.append(f"{SYSTEM_LABEL[s].split(', ')[-1]} {fmt(v)} msg/s = {r:.0%}")
    if not parts:
        return None
    return (f"**tidings-client against the bare reader (medians):** {'; '.join(parts)} of the bare "
            f"reader's {fmt(bare)} msg/s from the same server and channel.")


def spread(vals, show):
    """`show(median)`, with `(show(min)–show(max))` when the runs differ; "—" without runs."""
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1 or min(vals) == max(vals):
        return show(med)
    return f"{show(med)} ({show(min(vals))}–{show(max(vals))})"


def percent(v):
    return f"{v * 100:.0f} %"


# Measurements bench/run makes once, not once per run.
ONCE = {"mongodb-connector-cost", "sdk-js-bundle"}


def commands_md(d, name, systems):
    """The "Command per run" lines: one when every system ran the same command."""
    cmds = [(s, d.commands[(name, s)]) for s in systems if (name, s) in d.commands]
    if not cmds:
        return []
    head = "Command (once)" if d.kind.get(name, name) in ONCE else "Command per run"
    if len({c for _, c in cmds}) == 1 and (len(cmds) > 1 or head != "Command per run"):
        return [f"{head}: `{cmds[0][1]}`\n"]
    return [f"{head}:\n"] + [f"- {SYSTEM_LABEL.get(s, s)}: `{c}`" for s, c in cmds] + [""]


def mongodb_throughput_section(d, name, md):
    """Stages as rows: events/s, share of the ceiling, group sizes, CPU by kind of thread."""
    md.append(DESCRIPTION["mongodb-throughput"] + "\n")
    events = d.median(name, "ceiling", "events") or d.median(name, "end-to-end", "events")
    channels = d.median(name, "ceiling", "channels") or d.median(name, "end-to-end", "channels")
    runs = max((len(d.vals(name, k, "events_per_s")) for k, _ in MONGODB_STAGES), default=0)
    batch = d.median(name, "ceiling", "max_batch_events")
    batch = f", `max_batch_events` {fmt(int(batch))}" if batch else ""
    over = "one run" if runs == 1 else f"the median over {runs} runs with (min–max)"
    md.append(f"{fmt(events)} change events into {fmt(channels)} channels per stage{batch}; {over}.\n")
    md.extend(commands_md(d, name, d.systems(name)))
    md.append("| stage | events/s | share of the ceiling | groups | CPU (100 % = one core) |")
    md.append("|---|---:|---:|---|---|")
    known = [k for k, _ in MONGODB_STAGES]
    stages = MONGODB_STAGES + [(k, k) for k in d.systems(name) if k not in known]
    for key, label in stages:
        if not d.vals(name, key, "events_per_s"):
            continue
        share = d.vals(name, key, "ceiling_share")
        if key == "ceiling":
            share_cell = "(the ceiling)"
        else:
            share_cell = spread(share, percent)
        groups = [f"{spread(d.vals(name, key, g), fmt)} {lbl}" for g, lbl in MONGODB_GROUPS
                  if d.vals(name, key, g)]
        cpu = []
        for metric in sorted(d.values.get(name, {}).get(key, {})):
            if metric.startswith("cpu_pct."):
                thread = metric[len("cpu_pct."):]
                cpu.append(f"`{thread}` {spread(d.vals(name, key, metric), lambda v: f'{v:.0f} %')}")
        md.append(f"| {label} | {cell(d, name, key, 'events_per_s', '')} | {share_cell} "
                  f"| {', '.join(groups) or '—'} | {', '.join(cpu) or '—'} |")
    md.append("")


def connector_cost_section(d, name, md):
    """Configurations as rows: time per event with criterion's interval, events/s on one core."""
    md.append(DESCRIPTION["mongodb-connector-cost"] + "\n")
    systems = d.systems(name)
    md.extend(commands_md(d, name, systems))
    order = [k for k in CONNECTOR_COST_LABEL if k in systems] + [k for k in systems if k not in CONNECTOR_COST_LABEL]
    own = [k for k in order if not k.startswith("for_scale")]
    scale = [k for k in order if k.startswith("for_scale")]

    def rows(keys):
        out = ["| configuration | time per event (95 % CI) | events/s on one core |", "|---|---:|---:|"]
        for k in keys:
            us = d.median(name, k, "us_per_event")
            if us is None:
                continue
            lo, hi = d.median(name, k, "us_per_event_ci_low"), d.median(name, k, "us_per_event_ci_high")
            ci = f" ({fmt(lo)}–{fmt(hi)})" if lo is not None and hi is not None else ""
            out.append(f"| {CONNECTOR_COST_LABEL.get(k, k)} (`{k}`) | {fmt(us)} µs{ci} "
                       f"| {fmt(d.median(name, k, 'events_per_s'))} |")
        return out

    md.extend(rows(own))
    md.append("")
    if scale:
        md.append("For scale, work around the connector that is not its cost:\n")
        md.extend(rows(scale))
        md.append("")


# Scenarios whose section is not the generic figures-by-systems table.
SECTIONS = {
    "mongodb-throughput": mongodb_throughput_section,
    "mongodb-connector-cost": connector_cost_section,
}


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
    issues = ["7"] if lines else []
    # The Postgres connector's goals (issue 4), from the postgres scenarios.
    n = len(lines)
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
    if len(lines) > n:
        issues.append("4")
    # The MongoDB connector's goals (issue 5).
    n = len(lines)
    e2e = d.median("mongodb-throughput", "end-to-end", "events_per_s")
    if e2e is not None:
        share = d.median("mongodb-throughput", "end-to-end", "ceiling_share")
        lines.append(f"| MongoDB: ≥ 50,000 change events/s end to end, into the durable log (issue 5) "
                     f"| Tidings {fmt(e2e)} events/s | {fmt_ratio(share)} of the ceiling "
                     f"| {'met' if e2e >= 50000 else 'not met'} |")
    costs = {k: d.median("mongodb-connector-cost", k, "us_per_event")
             for k in d.systems("mongodb-connector-cost") if not k.startswith("for_scale")}
    costs = {k: v for k, v in costs.items() if v is not None}
    if costs:
        worst = max(costs, key=costs.get)
        best = min(costs, key=costs.get)
        lines.append(f"| MongoDB: connector cost ≤ 10 µs per event in every configuration (issue 5) "
                     f"| slowest {fmt(costs[worst])} µs (`{worst}`), fastest {fmt(costs[best])} µs "
                     f"(`{best}`), {len(costs)} configurations | — "
                     f"| {'met' if costs[worst] <= 10 else 'not met'} |")
    if len(lines) > n:
        issues.append("5")
    # The client SDKs' goals (issue 6).
    n = len(lines)
    rr = "sdk-rust-receive"
    judged = next((s for s in ("client-current-thread", "client-alone") if d.median(rr, s, "msgs_per_s") is not None), None)
    if judged:
        v = d.median(rr, judged, "msgs_per_s")
        workers = lambda s: d.median(rr, s, "worker_threads")
        others = [f"{SYSTEM_LABEL[s]} {fmt(d.median(rr, s, 'msgs_per_s'))} msg/s"
                  + (f" ({fmt(workers(s))} worker{'s' if workers(s) != 1 else ''})" if workers(s) else "")
                  for s in ("client-multi-thread", "client-alone")
                  if s != judged and d.median(rr, s, "msgs_per_s") is not None]
        bare = d.median(rr, "bare-websocket", "msgs_per_s")
        lines.append(f"| Rust client: ≥ 500,000 msg/s received by one client (issue 6) "
                     f"| {SYSTEM_LABEL[judged]} {fmt(v)} msg/s" + "".join(f"; {o}" for o in others)
                     + f" | {fmt_ratio(ratio(v, bare)) + ' of the bare reader' if bare else '—'} "
                     f"| {'met' if v >= 500000 else 'not met'} |")
    gz = d.median("sdk-js-bundle", "js-sdk", "gzip_bytes")
    goal = d.median("sdk-js-bundle", "js-sdk", "goal_bytes")
    if gz is not None and goal:
        lines.append(f"| JS SDK: bundle ≤ {fmt(int(goal))} bytes minified and gzipped (issue 6) "
                     f"| {fmt(int(gz))} bytes | — | {'met' if gz <= goal else 'not met'} |")
    if len(lines) > n:
        issues.append("6")
    if lines:
        named = issues[0] if len(issues) == 1 else ", ".join(issues[:-1]) + " and " + issues[-1]
        md.append(f"## Goals (issue{'s' if len(issues) > 1 else ''} {named})\n")
        md.append("Computed from the figures below."
                  + (" For fan-out, each system's figure is its step of "
                     "the 10k series with the most delivered msg/s *within limits*: no problem reported, "
                     "p99 at most 1 s, at least 90 % of the offered deliveries made (a system past its "
                     "limit at every step it ran is shown at its lowest step, and says so)."
                     if "7" in issues else "")
                  + (" The Rust client is judged by `tidings-client` receiving from the server on a "
                     "current-thread runtime, the client's own cost on its core; the multi-thread "
                     "runtime adds hand-offs between threads, which share one CPU here."
                     if judged == "client-current-thread" else "") + "\n")
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
        if not any(d.values.get(name, {}).get(s) for s in systems):
            if desc in DESCRIPTION:
                md.append(DESCRIPTION[desc] + "\n")
            md.extend(commands_md(d, name, systems))
            md.append("No run produced a result.\n")
        elif kind in SECTIONS:
            SECTIONS[kind](d, name, md)
        else:
            if desc in DESCRIPTION:
                md.append(DESCRIPTION[desc] + "\n")
            md.extend(commands_md(d, name, systems))
            shown = SHOWN.get(kind)
            if shown is None:
                metrics = []
                for s in systems:
                    for k in d.values.get(name, {}).get(s, {}):
                        if k not in metrics:
                            metrics.append(k)
                shown = [(k, d.labels.get(k, k), d.units.get(k, ""), None) for k in metrics]
            md.extend(table(d, name, shown, rows))
            md.append("")
            if kind == "sdk-rust-receive":
                line = client_against_bare(d, name, rows)
                if line:
                    md.append(line + "\n")
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
