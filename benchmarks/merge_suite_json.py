"""Merge a GPU call's suite.json into the one kept in results/ (benchmarks/suite_carry.sh in).

    python3 benchmarks/merge_suite_json.py RESULTS/suite.json CALL/suite.json

Calls that continue a suite each carry a slim copy taken from results/ before they start; when two
calls start from the same copy (the second before the first came back), each call's suite.json
lacks the other's command and runs. Copying the later one over results/ would drop them: the
merge keeps every command (oldest first; a command repeated right after itself, a resume, once
with its latest date, as ``rnnlab bench`` lists it) and every run (the call's entry where both have one, keeping
the GPU the older entry recorded if the call's lacks it), runs in the suite's order (its TOML's
``[[runs]]``, found through suite.json's ``path`` under ``src/``; else the order the two files name
them) then by seed. Standard library only: it runs where the package's dependencies are not installed.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def commands(doc: dict) -> list[dict]:
    """A suite.json's commands, oldest first (one written before continued suites kept them holds
    one, at its top level: ``rnnlab.bench.suite.invocations``)."""
    if "invocations" in doc:
        return doc["invocations"]
    return [{k: doc.get(k) for k in ("command", "options", "written")}] if "command" in doc else []


def suite_order(doc: dict) -> list[str]:
    """The run names of the suite's TOML in their order, or [] when it is not found."""
    toml = SRC / doc.get("path", "")
    if not doc.get("path") or not toml.is_file():
        return []
    return [r["name"] for r in tomllib.loads(toml.read_text()).get("runs", [])]


def merge(kept: dict, call: dict, order: list[str] = ()) -> dict:
    """``call``'s suite.json with ``kept``'s commands and runs that it lacks; runs named in
    ``order`` (the suite's) first, in that order."""
    def key(c):
        return c.get("command"), json.dumps(c.get("options"), sort_keys=True)

    union = {(*key(c), c.get("written")): c for c in commands(kept) + commands(call)}
    calls: list[dict] = []
    for c in sorted(union.values(), key=lambda c: c.get("written") or ""):
        if calls and key(calls[-1]) == key(c):
            calls.pop()  # the same command again right after (a resume): once, with its latest date
        calls.append(c)
    runs = {r["dir"]: r for r in kept.get("runs", [])}
    for r in call.get("runs", []):
        old = runs.get(r["dir"], {})
        runs[r["dir"]] = {**r, "gpu": old["gpu"]} if "gpu" in old and "gpu" not in r else r
    names = list(order)
    for r in call.get("runs", []) + kept.get("runs", []):
        if r["name"] not in names:
            names.append(r["name"])
    order = sorted(runs.values(), key=lambda r: (names.index(r["name"]), -1 if r.get("seed") is None else r["seed"]))
    merged = {k: v for k, v in call.items() if k not in ("command", "options", "written")}
    return {**merged, "invocations": calls, "runs": order}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: merge_suite_json.py RESULTS/suite.json CALL/suite.json", file=sys.stderr)
        return 2
    kept_path, call_path = map(Path, argv)
    call = json.loads(call_path.read_text())
    kept = json.loads(kept_path.read_text()) if kept_path.exists() else {}
    kept_path.write_text(json.dumps(merge(kept, call, suite_order(call)), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
