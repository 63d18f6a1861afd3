#!/usr/bin/env python3
"""Boot benchmark: time from starting `vmm` to the probe guest's first
serial line and to its exit, and the VMM's peak RSS, over N runs.

usage: integration/bench/boot.py [--runs N] [--vmm PATH] [--memory SIZE]
Builds the release binary first unless --vmm is given.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time


def one_run(vmm, memory):
    t0 = time.monotonic()
    p = subprocess.Popen([vmm, "--memory", memory], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
    first = None
    for line in p.stdout:
        if first is None:
            first = time.monotonic() - t0
    _, status, usage = os.wait4(p.pid, 0)
    end = time.monotonic() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"vmm exited with {code}")
    return first, end, usage.ru_maxrss  # KiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--vmm")
    ap.add_argument("--memory", default="512M")
    a = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    vmm = a.vmm
    if vmm is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "vmm"],
                       cwd=root, check=True)
        vmm = os.path.join(root, "target", "release", "vmm")
    runs = [one_run(vmm, a.memory) for _ in range(a.runs)]
    first = sorted(r[0] * 1000 for r in runs)
    end = sorted(r[1] * 1000 for r in runs)
    rss = sorted(r[2] / 1024 for r in runs)
    p90 = lambda v: v[min(len(v) - 1, int(len(v) * 0.9))]
    print(f"vmm boot of the built-in probe, {a.runs} runs, --memory {a.memory}")
    print(f"  start -> first serial line: median {statistics.median(first):7.1f} ms  p90 {p90(first):7.1f} ms")
    print(f"  start -> guest exit:        median {statistics.median(end):7.1f} ms  p90 {p90(end):7.1f} ms")
    print(f"  peak RSS of vmm:            median {statistics.median(rss):7.1f} MiB p90 {p90(rss):7.1f} MiB")


if __name__ == "__main__":
    main()
