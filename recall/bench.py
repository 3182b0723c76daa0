"""Measuring a command as a whole process: wall time and peak RSS of its process tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Runs the command in argv[2:], its output to the file argv[1]; prints wall time and the peak RSS of the
# command's whole process tree (the largest ru_maxrss among the reaped descendants) as JSON.
_WRAPPER = r"""
import json, resource, subprocess, sys, time
with open(sys.argv[1], "wb") as log:
    t0 = time.perf_counter()
    rc = subprocess.run(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT).returncode
    wall = time.perf_counter() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mib": ru.ru_maxrss / 1024, "cpu_s": ru.ru_utime + ru.ru_stime}))
"""


def measure(cmd: list, logfile: str | os.PathLike, env: dict | None = None) -> dict:
    """Run ``cmd`` in a fresh wrapper process; returns rc, wall_s, peak_rss_mib and cpu_s of its process tree.
    A non-zero exit raises with the tail of the command's output (kept in ``logfile``)."""
    p = subprocess.run([sys.executable, "-c", _WRAPPER, str(logfile), *map(str, cmd)], capture_output=True,
                       text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(f"wrapper failed: {p.stderr[-2000:]}")
    res = json.loads(p.stdout.strip().splitlines()[-1])
    if res["rc"] != 0:
        tail = Path(logfile).read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {res['rc']}:\n{tail}")
    return res
