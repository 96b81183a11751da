"""A run's numbers and its store contents as one comparable JSON digest.

For refactors that must not change results: run the same command before and after, snapshot
both, and compare. The digest holds results.json without timings or environment, and per
store entry its key and a hash of every array's rows (by row key), so two stores written in
different chunkings but holding the same rows compare equal.

Usage::

    python -m benchmarks.snapshot RUN_DIR [STORE_DIR] --json before.json
    python -m benchmarks.snapshot RUN_DIR [STORE_DIR] --compare before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: results.json keys that vary between identical runs.
VOLATILE = ("seconds", "duration", "time", "elapsed", "per_second", "environment", "plugins")


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if not any(t in k for t in VOLATILE)}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _entry_digest(folder: Path) -> dict[str, str]:
    rows: dict[str, dict[int, str]] = {}
    for chunk in sorted(folder.glob("chunk-*.h5")):
        with h5py.File(chunk, "r") as f:
            keys = f["indices"][()].tolist()
            for name in f:
                if name == "indices":
                    continue
                data = f[name][()]
                for key, row in zip(keys, data, strict=True):
                    digest = hashlib.sha1(np.ascontiguousarray(row).tobytes()).hexdigest()
                    rows.setdefault(name, {}).setdefault(key, digest[:12])
    return {
        name: f"{hashlib.sha1(json.dumps(sorted(r.items())).encode()).hexdigest()[:16]}/{len(r)}"
        for name, r in rows.items()
    }


def snapshot(run_dir: Path, store: Path | None) -> dict[str, Any]:
    """The digest of a run folder and (optionally) a feature store."""
    results = json.loads((run_dir / "results.json").read_text())
    out: dict[str, Any] = {"metrics": _scrub(results.get("metrics", {})), "store": {}}
    if store is not None:
        for key_file in sorted(store.glob("entries/*/*/key.json")):
            out["store"][key_file.parent.name] = {
                "key": json.loads(key_file.read_text()),
                "rows": _entry_digest(key_file.parent),
            }
    return out


def differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Human-readable differences between two digests."""
    if type(a) is not type(b):
        return [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]
    if isinstance(a, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{path}/{key}: only in {'before' if key in a else 'after'}")
            else:
                out += differences(a[key], b[key], f"{path}/{key}")
        return out
    if isinstance(a, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} != {len(b)} items"]
        return [
            d
            for i, (u, v) in enumerate(zip(a, b, strict=True))
            for d in differences(u, v, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]


def main(argv: list[str] | None = None) -> int:
    """Print (or write, or compare) the digest; exit 1 when a comparison differs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("store", type=Path, nargs="?")
    parser.add_argument("--json", type=Path, help="write the digest here")
    parser.add_argument("--compare", type=Path, help="an earlier digest to compare with")
    args = parser.parse_args(argv)
    digest = snapshot(args.run_dir, args.store)
    if args.json:
        args.json.write_text(json.dumps(digest, indent=1, sort_keys=True, default=str))
    if args.compare:
        found = differences(
            json.loads(args.compare.read_text()), json.loads(json.dumps(digest, default=str))
        )
        print("\n".join(found) or f"identical ({len(digest['store'])} store entries)")
        return 1 if found else 0
    if not args.json:
        print(json.dumps(digest, indent=1, sort_keys=True, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
