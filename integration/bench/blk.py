#!/usr/bin/env python3
"""virtio-blk benchmark: the probe guest as load generator against the
in-process virtio-blk device (served on an iothread), next to fio on the host
against the same image file: the physical limit. Then the same guest and
frontend against our vhost-user-blk daemon and qemu-storage-daemon on the same
image, in the same run (random reads, QD 1 and 32), with the ratio. 4 KiB random reads and
writes at queue depth 1 and 32; IOPS and latency percentiles, and the ratio.

usage: integration/bench/blk.py [--vmm PATH] [--image PATH] [--size 1G]
                                [--ops N] [--fio-secs S] [--direct]
Builds the release binary first unless --vmm is given; installs fio with
apt-get if it is missing. Not a test: it prints figures.
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LINE = re.compile(r"# blkbench \S+ rw=(\w+) qd=(\d+) ops=(\d+) secs=([\d.]+) iops=(\d+) "
                  r"lat_us p50=([\d.]+) p90=([\d.]+) p99=([\d.]+) p999=([\d.]+) max=([\d.]+)")


def guest(vmm, image, rw, qd, ops, direct, vhost_socket=None):
    if vhost_socket:
        dev = ["--vhost-user-blk", f"socket={vhost_socket},queue_size=256"]
    else:
        disk = f"path={image},iothread=io0,queue_size=256"
        if direct:
            disk += ",direct=on"
        dev = ["--iothread", "id=io0", "--disk", disk]
    cmd = [vmm, "--memory", "512M", *dev,
           "--cmdline", f"console=ttyS0 probe=none blkbench={rw} blkbench-qd={qd} blkbench-ops={ops}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    m = next((LINE.search(l) for l in p.stdout.splitlines() if LINE.search(l)), None)
    if m is None:
        sys.exit(f"no blkbench line from the guest (exit {p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-2000:]}")
    iops = int(m.group(5))
    lat = [float(m.group(i)) for i in (6, 7, 8, 9, 10)]
    return iops, lat


def fio(image, rw, qd, secs, direct):
    if shutil.which("fio") is None:
        subprocess.run(["apt-get", "install", "-y", "-qq", "fio"], check=True,
                       stdout=subprocess.DEVNULL)
    engine = "psync" if qd == 1 else "io_uring"
    cmd = ["fio", "--name=host", f"--filename={image}", f"--rw={rw}", "--bs=4k",
           f"--iodepth={qd}", f"--ioengine={engine}", f"--direct={int(direct)}",
           f"--runtime={secs}", "--time_based", "--output-format=json",
           # fio drops the file's cached pages first by default; both sides
           # must see the same (warm) cache.
           "--invalidate=0",
           "--percentile_list=50:90:99:99.9"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    job = out["jobs"][0]["read" if rw == "randread" else "write"]
    pct = job["clat_ns"]["percentile"]
    lat = [pct[k] / 1000 for k in ("50.000000", "90.000000", "99.000000", "99.900000")]
    lat.append(job["clat_ns"]["max"] / 1000)
    return int(job["iops"]), lat


def daemon(kind, image, sock, direct):
    """Our vhost-user-blk daemon or qemu-storage-daemon on `image` at `sock`."""
    if os.path.exists(sock):
        os.unlink(sock)
    if kind == "ours":
        cmd = [os.path.join(ROOT, "target", "release", "vhost-user-blk"),
               "--socket", sock, "--image", image]
        if direct:
            cmd.append("--direct")
    else:
        cache = "cache.direct=on," if direct else ""
        cmd = ["qemu-storage-daemon", "--blockdev",
               f"driver=file,node-name=f,{cache}filename={image}",
               "--export", f"type=vhost-user-blk,id=e,node-name=f,addr.type=unix,"
               f"addr.path={sock},writable=on"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if os.path.exists(sock):
            return p
        time.sleep(0.01)
    p.kill()
    sys.exit(f"{kind} daemon did not create {sock}")


def backends(vmm, image, ops, direct):
    """The same guest and frontend against our daemon, qemu-storage-daemon
    and the in-process device: 4 KiB random reads at QD 1 and 32."""
    sock = "/tmp/vmm-blk-bench.sock"
    print(f"\n4 KiB random reads through the VMM's frontend; IOPS (p50 us)")
    print(f"{'':10} {'in-process':>18} {'our daemon':>18} {'qemu-storage-d.':>18} {'ours/qsd':>9}")
    for qd in (1, 32):
        row = {}
        for kind in ("inproc", "ours", "qsd"):
            if not direct:
                warm(image)
            if kind == "inproc":
                row[kind] = guest(vmm, image, "randread", qd, ops, direct)
                continue
            d = daemon(kind, image, sock, direct)
            try:
                row[kind] = guest(vmm, image, "randread", qd, ops, direct, sock)
            finally:
                d.kill()
                d.wait()
        cell = lambda k: f"{row[k][0]:8d} ({row[k][1][0]:6.1f})"
        print(f"qd{qd:<8} {cell('inproc'):>18} {cell('ours'):>18} {cell('qsd'):>18} "
              f"{row['ours'][0] / row['qsd'][0]:8.2f}x")


def warm(image):
    """Reads the whole image so both sides start from a warm page cache."""
    with open(image, "rb") as f:
        while f.read(1 << 24):
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--vmm")
    ap.add_argument("--image", default="/var/tmp/vmm-blk-bench.img")
    ap.add_argument("--size", default="1G")
    ap.add_argument("--ops", type=int, default=50000)
    ap.add_argument("--fio-secs", type=int, default=10)
    ap.add_argument("--direct", action="store_true", help="O_DIRECT on both sides")
    a = ap.parse_args()
    vmm = a.vmm
    if vmm is None:
        subprocess.run(["cargo", "build", "--release", "--locked", "-q", "-p", "vmm",
                        "-p", "vmm-backends", "--bins"], cwd=ROOT, check=True)
        vmm = os.path.join(ROOT, "target", "release", "vmm")
    if not os.path.exists(a.image):
        # Allocated, not sparse: reads of holes would flatter both sides.
        subprocess.run(["fallocate", "-l", a.size, a.image], check=True)
        subprocess.run(["dd", "if=/dev/zero", f"of={a.image}", "bs=1M", "conv=notrunc",
                        f"count={os.path.getsize(a.image) >> 20}", "status=none"], check=True)
    print(f"4 KiB random I/O on {a.image} ({os.path.getsize(a.image) >> 20} MiB), "
          f"{'O_DIRECT' if a.direct else 'page cache'}; latencies in us")
    print(f"{'':22} {'IOPS':>8} {'p50':>8} {'p90':>8} {'p99':>8} {'p99.9':>8} {'max':>9}")
    for rw in ("randread", "randwrite"):
        for qd in (1, 32):
            if not a.direct:
                warm(a.image)
            g = guest(vmm, a.image, rw, qd, a.ops, a.direct)
            h = fio(a.image, rw, qd, a.fio_secs, a.direct)
            for who, (iops, lat) in (("probe/virtio-blk", g), ("fio on the host", h)):
                print(f"{rw:9} qd{qd:<2} {who:17} {iops:8d} " + " ".join(f"{x:8.1f}" for x in lat[:4])
                      + f" {lat[4]:9.1f}")
            print(f"{rw:9} qd{qd:<2} ratio guest/host: {g[0] / h[0]:.2f}x IOPS")
    backends(vmm, a.image, a.ops, a.direct)


if __name__ == "__main__":
    main()
