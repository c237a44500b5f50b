#!/usr/bin/env python3
"""Split `tidings-bench --json pg` output into result files bench/report.py reads.

usage: pg_results.py PG_JSONL RESULTS_DIR RUN COMMANDS_TSV COMMAND

Each JSON line of `tidings-bench pg` is one measurement of one system (`postgres-throughput`,
`postgres-latency-<rate>`; `tidings`, `pg_recvlogical`, `polling-relay`). Each becomes
RESULTS_DIR/<name>.<system>.<RUN>.json, with `scenario` set to the kind of table
(`postgres-throughput` or `postgres-latency`), and COMMANDS_TSV gets a line per new name and
system, as bench/run writes for its own scenarios.
"""

import json
import os
import sys


def main():
    src, results, run, commands, command = sys.argv[1:]
    seen = set()
    if os.path.exists(commands):
        with open(commands) as f:
            for line in f:
                parts = line.rstrip("\n").split("\t")
                if len(parts) == 3:
                    seen.add((parts[0], parts[1]))
    with open(src) as lines, open(commands, "a") as cmds:
        for line in lines:
            line = line.strip()
            if not line.startswith("{"):
                continue
            obj = json.loads(line)
            name, system = obj["scenario"], obj["system"]
            obj["scenario"] = "postgres-latency" if name.startswith("postgres-latency") else name
            with open(os.path.join(results, f"{name}.{system}.{run}.json"), "w") as f:
                f.write(json.dumps(obj) + "\n")
            if (name, system) not in seen:
                seen.add((name, system))
                cmds.write(f"{name}\t{system}\t{command}\n")


if __name__ == "__main__":
    main()
