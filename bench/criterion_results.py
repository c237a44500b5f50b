#!/usr/bin/env python3
"""Turn a criterion benchmark group's estimates into result files bench/report.py reads.

usage: criterion_results.py CRITERION_HOME GROUP SCENARIO RESULTS_DIR RUN COMMANDS_TSV COMMAND

Criterion writes CRITERION_HOME/<group>/<bench>/new/estimates.json (nanoseconds per iteration)
and benchmark.json beside it (the throughput the bench declared). For each bench of GROUP this
writes RESULTS_DIR/<SCENARIO>.<bench>.<RUN>.json with the time per element: criterion's median
point estimate and the bounds of its 95 % confidence interval, divided by the elements one
iteration handles (`Throughput::Elements`; 1 when the bench declares none). COMMANDS_TSV gets a
line per bench. Exits 1 when the group has no bench with estimates.
"""

import json
import os
import sys


def main():
    home, group, scenario, results, run, commands, command = sys.argv[1:]
    gdir = os.path.join(home, group)
    benches = sorted(os.listdir(gdir)) if os.path.isdir(gdir) else []
    written = 0
    with open(commands, "a") as cmds:
        for bench in benches:
            new = os.path.join(gdir, bench, "new")
            try:
                with open(os.path.join(new, "estimates.json")) as f:
                    est = json.load(f)
                with open(os.path.join(new, "benchmark.json")) as f:
                    meta = json.load(f)
            except (OSError, ValueError):
                continue
            elements = (meta.get("throughput") or {}).get("Elements") or 1
            median = est["median"]
            ns = median["point_estimate"] / elements
            ci = median["confidence_interval"]
            obj = {
                "scenario": scenario,
                "system": meta.get("function_id") or bench,
                "ns_per_event": round(ns, 1),
                "us_per_event": round(ns / 1000, 4),
                "us_per_event_ci_low": round(ci["lower_bound"] / elements / 1000, 4),
                "us_per_event_ci_high": round(ci["upper_bound"] / elements / 1000, 4),
                "events_per_s": round(1e9 / ns),
                "events_per_iteration": elements,
                "ok": True,
                "problems": [],
            }
            with open(os.path.join(results, f"{scenario}.{obj['system']}.{run}.json"), "w") as f:
                f.write(json.dumps(obj) + "\n")
            cmds.write(f"{scenario}\t{obj['system']}\t{command}\n")
            written += 1
    if not written:
        print(f"criterion_results.py: no estimates under {gdir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
