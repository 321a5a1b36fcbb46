#!/usr/bin/env python3
"""Prints the campaign's table (markdown) from each run's row.json.

  table.py OUT_DIR NEMESIS...
"""
import json
import os
import sys


def codes(d):
    return " ".join(f"{k} {v}" for k, v in d.items()) or "-"


def main():
    out, names = sys.argv[1], sys.argv[2:]
    print("| nemesis | bids sent | accepted | rejected | unanswered (last error) | lost | doubled | told both | error replies by code | s with errors | no service (s) | recover (s) | outcome p99 / max (s) | audit | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        path = os.path.join(out, name, "row.json")
        if not os.path.exists(path):
            print(f"| {name} | skipped or not run | | | | | | | | | | | | | |")
            continue
        with open(path) as f:
            r = json.load(f)
        if "bids" not in r:
            print(f"| {name} | - | - | - | - | - | - | - | - | - | - | - | - | - | {r['verdict']} |")
            continue
        unanswered = f"{r['unanswered']} ({codes(r['gave_up'])})" if r["unanswered"] else "0"
        rec = "-" if r.get("recover_s") is None else r["recover_s"]
        print(f"| {name} | {r['bids']} | {r['accepted']} | {r['rejected']} | {unanswered} | {r['lost']} | {r['doubled']} | {r['told_both']} | {codes(r['error_replies'])} | {r.get('error_secs', '-')} | {r['no_service_s']} | {rec} | {r['outcome_p99_s']} / {r['outcome_max_s']} | {r['audit']} | {r['verdict']} |")
    print()
    for name in names:
        path = os.path.join(out, name, "row.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            r = json.load(f)
        print(f"- {name}: {r.get('what') or '-'}; fault at {r.get('fault_at')} s, healed at {r.get('heal_at')} s; "
              + "; ".join(r.get("notes") or []))
        for m, n in (r.get("error_messages") or {}).items():
            print(f"  - {n} x {m}")
        if r.get("skew"):
            print(f"  - skew: {json.dumps(r['skew'])}")
        for kind, ex in (r.get("examples") or {}).items():
            print(f"  - first {kind}: {ex[:300]}")


if __name__ == "__main__":
    sys.exit(main())
