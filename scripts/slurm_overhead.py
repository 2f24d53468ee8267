"""Seconds each job cost beyond its own command, from a Snakemake log and the run's benchmark files.

    python scripts/slurm_overhead.py PROJECT SNAKEMAKE_LOG

For every job the log shows starting (local: `rule X:` after a timestamp; SLURM: submitted) and
finishing (`Finished jobid: N`), overhead = (finish - start) - the command's own wall time (the `s`
column of its benchmark file). Run it on a local run's log and on a SLURM run's log of the same grid
to compare; prints one line per rule and the mean per job. Timestamps have one-second resolution.
"""

from __future__ import annotations

import re
import sys
from datetime import datetime
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's ncil package
from ncil.reports.cost_table import read_benchmark  # noqa: E402

STAMP = re.compile(r"^\s*\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]")


def parse(log: str) -> list[tuple[str, float, str]]:
    """(rule, seconds from start to finish, benchmark file) of each finished job of the log."""
    start, bench, rule_of, last = {}, {}, {}, None
    current = None
    out = []
    for line in log.splitlines():
        m = STAMP.match(line)
        if m:
            last = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
            continue
        m = re.match(r"^\s*(?:local)?rule (\w+):", line)
        if m:
            current = {"rule": m.group(1), "time": last}
            continue
        m = re.match(r"^\s*jobid: (\d+)", line)
        if m and current:
            jid = m.group(1)
            start.setdefault(jid, current["time"])
            rule_of[jid] = current["rule"]
            current["jid"] = jid
            continue
        m = re.match(r"^\s*benchmark: (\S+)", line)
        if m and current and "jid" in current:
            bench[current["jid"]] = m.group(1)
            continue
        m = re.match(r"^\s*Finished jobid: (\d+)", line)
        if m and m.group(1) in start and m.group(1) in bench:
            jid = m.group(1)
            out.append((rule_of[jid], (last - start[jid]).total_seconds(), bench[jid]))
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    project, log = Path(argv[0]), Path(argv[1]).read_text()
    rows = []
    for rule, span, bench in parse(log):
        path = project / bench
        if not path.exists():
            continue
        own = read_benchmark(path.read_text(), str(path))["s"]  # the command's own wall time
        rows.append((rule, span, own, span - own))
    if not rows:
        print("no finished job with a benchmark file found", file=sys.stderr)
        return 1
    for rule in sorted({r[0] for r in rows}):
        sel = [r for r in rows if r[0] == rule]
        print(f"{rule:16s} jobs {len(sel):3d}  span {mean(r[1] for r in sel):7.1f} s  command {mean(r[2] for r in sel):7.1f} s"
              f"  overhead {mean(r[3] for r in sel):6.1f} s/job")
    print(f"{'all':16s} jobs {len(rows):3d}  overhead {mean(r[3] for r in rows):6.1f} s/job")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
