"""The GPU check's record: the machine, the software and every test case's outcome, as one JSON file."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

VERSIONS = ("torch", "transformers", "nvidia-modelopt", "numpy", "onnx", "onnxruntime", "tritonclient",
            "nvidia-pytriton", "safetensors")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _gpu() -> dict[str, object]:
    query = "name,driver_version,memory.total,compute_cap"
    try:
        line = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"], capture_output=True,
                              text=True, timeout=30).stdout.strip().splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"name": None}
    name, driver, memory, cap = (part.strip() for part in line[0].split(","))
    return {"name": name, "driver": driver, "memory": memory, "compute_capability": cap, "count": len(line)}


def _cases(junit: Path) -> list[dict[str, object]]:
    cases = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome = "passed"
        detail = None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                detail = (node.get("message") or "")[:300]
        # what a test measured (pytest's record_property), e.g. the CPU/GPU parity figures
        measured = {p.get("name"): p.get("value") for p in case.iter("property")}
        cases.append({"case": f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}", "outcome": outcome,
                      "seconds": round(float(case.get("time", 0.0)), 2), **({"detail": detail} if detail else {}),
                      **({"measured": measured} if measured else {})})
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--junit", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--status", type=int, required=True)
    args = parser.parse_args()
    cases = _cases(args.junit) if args.junit.is_file() else []
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    # the device copy of the tree has no .git: the caller names the commit it sent (GPU_CHECK_COMMIT)
    commit = os.environ.get("GPU_CHECK_COMMIT") or subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    record = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
              "gpu": _gpu(), "python": platform.python_version(),
              "versions": {d: _version(d) for d in VERSIONS}, "pytest_exit": args.status, "counts": counts,
              "selection": os.environ.get("GPU_CHECK_K") or "all",
              "seconds": round(sum(float(c["seconds"]) for c in cases), 1), "cases": cases}
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"gpu_check: {counts} in {record['seconds']} s on {record['gpu'].get('name')} -> {args.out}")


if __name__ == "__main__":
    main()
