"""Record new code fingerprints on results whose bytes a code change did not change, without rerunning.

After a refactor (a module moved, a function renamed) every fingerprint of the code it touches changes
(ncil/pipeline/fingerprints.py), so both engines call the steps that ran that code stale, and `verify` refuses
the metrics.json files that record the old fingerprints. When the tests that compare bytes with the
commit before show that the refactor keeps every artifact's bytes (tests/test_step_syncs.py,
tests/test_official_step.py, CI's seed-1 rerun against dvc.lock), this records that fact once:

1. each committed metrics.json (dvc.lock's, and the Table 4 grids' that have run) gets the current ``provenance.code_fingerprints`` (nothing else changes);
2. dvc.lock gets, for every stage, the current fingerprints under ``params: fingerprints.yaml``, the new
   md5 and size of fingerprints.yaml (check_params' dependency) and of every rewritten metrics.json,
   wherever dvc.lock lists it (the summarize stage's output, the table stages' inputs).

dvc.lock is edited line by line in DVC's own layout (the lines that change and no others), and the result
is checked: loaded as YAML, the new dvc.lock differs from the old one in those values alone, and each
metrics.json in its code fingerprints alone. Where every output is present, `dvc commit --force` records
the same hashes for dvc.lock (step 2); the metrics.json files (step 1) still need this.

    python scripts/refresh_code_provenance.py            # rewrite
    python scripts/refresh_code_provenance.py --check    # exit 1 if anything would be rewritten
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ncil.pipeline import fingerprints, io  # noqa: E402

LOCK = "dvc.lock"


def md5_and_size(data: bytes) -> tuple[str, int]:
    return hashlib.md5(data).hexdigest(), len(data)


def refreshed_metrics(text: str, code: dict[str, str]) -> str:
    """A metrics.json's text with ``code`` as its code fingerprints, written as the summarize step writes it."""
    data = json.loads(text)
    data["provenance"]["code_fingerprints"] = dict(code)
    return io.dumps_json(data)


def refreshed_lock(text: str, values: dict[str, str], files: dict[str, tuple[str, int]]) -> str:
    """dvc.lock's text with every ``fingerprints.yaml`` param set to ``values`` and the md5 and size of
    every entry whose path is in ``files`` set to theirs; every other line as it was."""
    out, path, in_fingerprints = [], None, None
    for line in text.splitlines(keepends=True):
        entry = re.match(r"^\s*- path: (.+)$", line)
        if entry:
            path = entry.group(1).strip()
        elif re.match(r"^\s*(md5|size): ", line) and path in files:
            key = line.split(":")[0].strip()
            indent = line[: len(line) - len(line.lstrip())]
            md5, size = files[path]
            line = f"{indent}{key}: {md5 if key == 'md5' else size}\n"
        elif not re.match(r"^\s*(hash|md5|size): ", line):
            path = None
        indent = len(line) - len(line.lstrip())
        if re.match(r"^\s*fingerprints\.yaml:\s*$", line):
            in_fingerprints = indent
        elif in_fingerprints is not None and indent > in_fingerprints:
            verb, _ = line.strip().split(": ", 1)
            if verb not in values:
                raise SystemExit(f"{LOCK}: fingerprints.yaml param {verb!r} is not a verb of the package now")
            line = f"{' ' * indent}{verb}: {values[verb]}\n"
        else:
            in_fingerprints = None
        out.append(line)
    return "".join(out)


def expected_lock(old: dict, values: dict[str, str], files: dict[str, tuple[str, int]]) -> dict:
    """What ``refreshed_lock`` must give, as data: the independent check of its line edits."""
    new = copy.deepcopy(old)
    for stage in new["stages"].values():
        if "fingerprints.yaml" in stage.get("params", {}):
            stage["params"]["fingerprints.yaml"] = {v: values[v] for v in stage["params"]["fingerprints.yaml"]}
        for entry in stage.get("deps", []) + stage.get("outs", []):
            if entry["path"] in files:
                entry["md5"], entry["size"] = files[entry["path"]]
    return new


def extra_grid_metrics(root: Path) -> list[str]:
    """The committed metrics.json files of the verified extra grids that have run (Table 4's, the digits' EFCIL
    benchmark: no dvc.lock of their own, but the default grid's `verify` recomputes them, code fingerprints
    included): results/<grid>/**/metrics.json."""
    from ncil.pipeline import paths

    return sorted(str(path.relative_to(root)) for grid, _, _ in paths.committed_grid_sources(str(root))
                  for path in (root / "results" / grid).rglob("metrics.json"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="rewrite nothing; exit 1 if anything is out of date")
    args = parser.parse_args(argv)
    problem = fingerprints.problem(ROOT)
    if problem:
        raise SystemExit(f"error: {problem}")
    values, code = fingerprints.committed(ROOT), fingerprints.for_metrics()

    lock_text = (ROOT / LOCK).read_text(encoding="utf-8")
    old_lock = yaml.load(lock_text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    locked = {entry["path"] for stage in old_lock["stages"].values() for entry in stage.get("outs", [])
              if entry["path"].endswith("metrics.json")}
    metrics = sorted(locked | set(extra_grid_metrics(ROOT)))
    rewrites, files = {}, {fingerprints.FILE: md5_and_size((ROOT / fingerprints.FILE).read_bytes())}
    for rel in metrics:
        before = (ROOT / rel).read_text(encoding="utf-8")
        after = refreshed_metrics(before, code)
        old, new = json.loads(before), json.loads(after)
        old["provenance"].pop("code_fingerprints", None), new["provenance"].pop("code_fingerprints")
        if old != new:
            raise SystemExit(f"{rel}: would change more than provenance.code_fingerprints")
        files[rel] = md5_and_size(after.encode("utf-8"))
        if after != before:
            rewrites[rel] = after
    new_lock = refreshed_lock(lock_text, values, files)
    if yaml.load(new_lock, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) != expected_lock(old_lock, values, files):
        raise SystemExit(f"{LOCK}: the line edits do not give the expected data; nothing written")
    if new_lock != lock_text:
        rewrites[LOCK] = new_lock
    if args.check:
        for rel in rewrites:
            print(f"out of date: {rel}")
        return 1 if rewrites else 0
    for rel, text in rewrites.items():
        io.write_text(ROOT / rel, text)
    print(f"{len(rewrites) - (LOCK in rewrites)} metrics.json files and {'dvc.lock' if LOCK in rewrites else 'no dvc.lock'} "
          f"rewritten ({len(locked)} metrics.json files in {LOCK}, {len(metrics) - len(locked)} of the verified extra grids)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
