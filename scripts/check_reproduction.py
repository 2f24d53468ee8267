"""Helpers of `make check-reproduction-seed`: rerun one seed of the default grid and check it.

    python scripts/check_reproduction.py targets --seed 1   # the seed's metrics.json of every setting x method
    python scripts/check_reproduction.py lock               # every output on disk hashes to dvc.lock

`lock` compares the MD5 of each file output recorded in dvc.lock (the hash DVC records for a file) with
the file on disk, skipping outputs that are not on disk (the seeds that were not rerun) and directory
outputs; it exits 1 naming each file whose content differs, and 2 when nothing could be checked.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import yaml


def targets(params_file: Path, seed: int) -> list[str]:
    params = yaml.safe_load(params_file.read_text())
    if seed not in params["seeds"]:
        raise SystemExit(f"{params_file}: seeds: {seed} is not one of the grid's seeds {params['seeds']}")
    dataset = params["dataset"]["name"]
    return [f"results/{dataset}/{setting}/{method}/seed{seed}/metrics.json"
            for setting in params["scenario"] for method in params["method"]]


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_lock(lock_file: Path) -> int:
    lock = yaml.safe_load(lock_file.read_text())
    checked, differing = 0, []
    for stage in lock["stages"].values():
        for out in stage.get("outs", []):
            path, md5 = Path(out["path"]), out.get("md5", "")
            if md5.endswith(".dir") or not path.is_file():
                continue
            checked += 1
            if file_md5(path) != md5:
                differing.append(f"{path}: dvc.lock records md5 {md5}, the rerun wrote {file_md5(path)}")
    if differing:
        print("not reproduced:\n" + "\n".join(differing))
        return 1
    if checked == 0:
        print(f"{lock_file}: no output of dvc.lock is on disk: nothing was checked")
        return 2
    print(f"{checked} outputs on disk hash to {lock_file}")
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("targets")
    t.add_argument("--seed", type=int, default=1)
    t.add_argument("--params", type=Path, default=Path("params.yaml"))
    c = sub.add_parser("lock")
    c.add_argument("--lock", type=Path, default=Path("dvc.lock"))
    args = parser.parse_args(argv)
    if args.command == "targets":
        print(" ".join(targets(args.params, args.seed)))
        return 0
    return check_lock(args.lock)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
