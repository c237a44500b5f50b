#!/usr/bin/env python3
"""Split JSON-lines output of a benchmark program into result files bench/report.py reads.

usage: json_results.py JSONL RESULTS_DIR RUN COMMANDS_TSV COMMAND [--expect SYSTEM,...]

Reads the lines of `tidings-bench --json pg`, `examples/mongodb_throughput.rs --json`,
`clients/rust/examples/receive_rate.rs --json` and the JS SDK's `scripts/*.mjs --json`: each
line that is a JSON object is one measurement (`scenario`) of one system or stage (`system`),
with its figures, `ok` and `problems`; other lines are ignored. Each becomes
RESULTS_DIR/<scenario>.<system>.<RUN>.json with `scenario` set to the kind of table (the
scenario's name, but `postgres-latency` for every `postgres-latency-<rate>`), and COMMANDS_TSV
gets a line per new scenario and system, as bench/run writes for its own scenarios.

Exits 1 when a line reports `ok: false`, or when a system named with --expect has no line (the
program stopped early).
"""

import json
import os
import sys

# Scenarios whose names carry a parameter, and the kind of table they share.
KIND_OF_PREFIX = {"postgres-latency-": "postgres-latency"}


def kind(name):
    for prefix, k in KIND_OF_PREFIX.items():
        if name.startswith(prefix):
            return k
    return name


def main():
    args = sys.argv[1:]
    expect = set()
    if "--expect" in args:
        i = args.index("--expect")
        expect = set(filter(None, args[i + 1].split(",")))
        del args[i:i + 2]
    src, results, run, commands, command = args
    seen = set()
    if os.path.exists(commands):
        with open(commands) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3:
                    seen.add((parts[0], parts[1]))
    status, got = 0, set()
    with open(src) as lines, open(commands, "a") as cmds:
        for line in lines:
            line = line.strip()
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            name, system = obj["scenario"], obj["system"]
            got.add(system)
            obj["scenario"] = kind(name)
            with open(os.path.join(results, f"{name}.{system}.{run}.json"), "w") as f:
                f.write(json.dumps(obj) + "\n")
            if (name, system) not in seen:
                seen.add((name, system))
                cmds.write(f"{name}\t{system}\t{command}\n")
            if obj.get("ok") is False:
                print(f"{src}: {name} [{system}]: {'; '.join(obj.get('problems', []))}", file=sys.stderr)
                status = 1
    if expect - got:
        print(f"{src}: no result for {', '.join(sorted(expect - got))}", file=sys.stderr)
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
