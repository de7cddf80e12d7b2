"""Train every registered method on the ``tiny`` and ``demo`` presets and keep their metrics.

A refactoring that should change no result is checked by running this before and after it and
comparing the two files: on CPU, with the same seeds, every ``metrics.json`` must be bit-identical.

Usage:
    python scripts/identity_check.py --out before.json
    python scripts/identity_check.py --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROTOCOLS = ("none", "random:0.5")
DICMOR = str(Path(sys.executable).with_name("dicmor"))
"""The command-line entry point installed beside this interpreter."""


def methods() -> list[str]:
    """The registered methods, as ``dicmor models`` lists them (first word of each line)."""
    listing = subprocess.run([DICMOR, "models"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in listing.splitlines() if line.strip()]


def run(preset: str, method: str, protocol: str, folder: Path) -> dict:
    """The ``metrics`` of one ``dicmor train`` run, in a folder of its own (no stage cache is
    shared between runs)."""
    name = f"{preset}-{method}-{protocol.replace(':', '')}"
    command = [
        DICMOR,
        "train",
        preset,
        "--method",
        method,
        "--missing",
        protocol,
        "--output-dir",
        str(folder / name),
        "--name",
        name,
        "--set",
        "train.progress=false",
    ]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads((folder / name / name / "metrics.json").read_text())["metrics"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file of every run's metrics")
    parser.add_argument("--compare", help="an earlier --out file that must match exactly")
    parser.add_argument("--presets", nargs="+", default=["tiny", "demo"])
    parser.add_argument("--methods", nargs="+", help="default: every registered method")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="identity-"))
    results = {}
    for preset in args.presets:
        for method in args.methods or methods():
            for protocol in PROTOCOLS:
                key = f"{preset} {method} {protocol}"
                results[key] = run(preset, method, protocol, folder)
                print(key, json.dumps(results[key]), flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    differ = [k for k in sorted(set(before) | set(results)) if before.get(k) != results.get(k)]
    for key in differ:
        print(f"DIFFERS {key}: {before.get(key)} -> {results.get(key)}")
    print(f"{len(results) - len(differ)} of {len(results)} runs identical")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
