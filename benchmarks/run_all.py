"""Run every benchmark in this folder, one after the other, and print their output.

One Xvfb is started for all of them when there is no display. ``--quick`` shortens each
(fewer repeats, a 10 s job) for a smoke run; the figures are then noisier. A summary of
the goal lines comes last.

    .venv/bin/python benchmarks/run_all.py [--quick]      (``make benchmarks``)
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _bench_util import ensure_display  # noqa: E402

BENCHMARKS = [
    ("bench_startup.py", [], ["--repeats", "3"]),
    ("bench_worker_roundtrip.py", [], ["--repeats", "10"]),
    ("bench_event_loop_stall.py", [], ["--seconds", "10", "--baseline-seconds", "3", "--control-seconds", "3"]),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter runs (smoke test)")
    ap.add_argument("--only", nargs="+", metavar="NAME", help="run only these scripts (e.g. bench_startup)")
    args = ap.parse_args(argv)

    ensure_display()
    summary, failed = [], []
    for script, normal, quick in BENCHMARKS:
        if args.only and not any(script.startswith(n) for n in args.only):
            continue
        cmd = [sys.executable, os.path.join(HERE, script), *(quick if args.quick else normal)]
        print(f"\n######## {script} {' '.join(cmd[2:])}".rstrip(), flush=True)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if "-> PASS" in line or "-> FAIL" in line or "CHECK FAILED" in line or "JOB FAILED" in line:
                summary.append(f"{script}: {line.strip()}")
        rc = proc.wait()
        print(f"######## {script}: exit code {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(script)

    print("\n======== summary")
    for line in summary:
        print(line)
    if failed:
        print(f"scripts that failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
