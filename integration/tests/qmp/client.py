"""Drives a running vmm through QMP with QEMU's own Python client.

usage: client.py SOCKET VMM_PID

Prints one "ok - ..." line per check and exits non-zero at the first that
fails; integration/tests/qmp.rs runs it and checks the lines.
"""

import asyncio
import json
import os
import socket
import stat
import sys
import time

from qemu.qmp import ExecuteError, QMPClient

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qmp_checks import ok  # noqa: E402


def raw_session(path):
    """Malformed input on a plain socket: error replies, the connection lives."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    f = s.makefile("rb")

    def reply():
        while True:
            msg = json.loads(f.readline())
            if "event" not in msg:
                return msg

    greeting = json.loads(f.readline())
    ok(greeting["QMP"]["version"]["qemu"]["major"] == 7, "raw: greeting", greeting)
    s.sendall(b'{"execute": "query-status"}')
    r = reply()
    ok(r.get("error", {}).get("class") == "CommandNotFound",
       "raw: commands before qmp_capabilities are refused", r)
    # Two messages in one write, the second split over two writes.
    s.sendall(b'{"execute": "qmp_capabilities", "id": 1}{"execute": "query-')
    s.sendall(b'status", "id": 2}\n')
    r1, r2 = reply(), reply()
    ok(r1 == {"return": {}, "id": 1} and r2["id"] == 2
       and r2["return"]["status"] == "running", "raw: split and joined messages", (r1, r2))
    s.sendall(b'{"execute": oops, }')
    r = reply()
    ok(r.get("error", {}).get("class") == "GenericError"
       and "JSON parse error" in r["error"]["desc"], "raw: malformed JSON gets an error", r)
    s.sendall(b"[" * 100 + b"]" * 100)
    r = reply()
    ok("nesting" in r.get("error", {}).get("desc", ""), "raw: too deep nesting gets an error", r)
    s.sendall(b'{"execute": "query-status", "id": "after"}')
    r = reply()
    ok(r.get("id") == "after" and r["return"]["running"] is True,
       "raw: the connection keeps working after bad input", r)
    s.sendall(b'{"execute": "no-such-command"}')
    r = reply()
    ok(r.get("error", {}).get("class") == "CommandNotFound", "raw: unknown command", r)
    s.close()


def cpu_ticks(pid, tid):
    """utime + stime of a thread, in clock ticks."""
    with open(f"/proc/{pid}/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


async def burnt(pid, tid, seconds=1.0):
    before = cpu_ticks(pid, tid)
    await asyncio.sleep(seconds)
    return cpu_ticks(pid, tid) - before


async def next_event(listener, name):
    while True:
        ev = await asyncio.wait_for(listener.get(), 10)
        if ev["event"] == name:
            return ev


async def main(path, pid):
    mode = os.stat(path).st_mode
    ok(stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600, "socket mode is 0600", oct(mode))
    raw_session(path)

    qmp = QMPClient("vmm-test")
    await qmp.connect(path)
    ok(qmp.greeting.QMP.version["qemu"]["major"] == 7, "qemu.qmp connects and negotiates")
    st = await qmp.execute("query-status")
    ok(st["status"] == "running" and st["running"] is True, "query-status running", st)

    cpus = await qmp.execute("query-cpus-fast")
    ok(len(cpus) == 2, "query-cpus-fast lists 2 vCPUs", cpus)
    for c in cpus:
        tid = c["thread-id"]
        task = f"/proc/{pid}/task/{tid}"
        with open(f"{task}/comm") as comm:
            name = comm.read().strip()
        ok(name == f"vcpu{c['cpu-index']}" and c["target"] == "x86_64",
           f"vCPU {c['cpu-index']} thread {tid} is a thread of vmm ({name})")

    blocks = await qmp.execute("query-block")
    ok(len(blocks) == 1 and blocks[0]["device"] == "virtio-blk0"
       and blocks[0]["inserted"]["ro"] is True
       and blocks[0]["inserted"]["file"].endswith("disk.img"), "query-block", blocks)

    with qmp.listener() as listener:
        await qmp.execute("stop")
        await next_event(listener, "STOP")
        st = await qmp.execute("query-status")
        ok(st["status"] == "paused" and st["running"] is False, "stop: paused and STOP", st)
        tid = cpus[0]["thread-id"]
        spent = await burnt(pid, tid)
        ok(spent <= 3, "stop: the spinning vCPU uses no CPU", f"{spent} ticks")
        await qmp.execute("cont")
        await next_event(listener, "RESUME")
        st = await qmp.execute("query-status")
        ok(st["status"] == "running", "cont: running and RESUME", st)
        spent = await burnt(pid, tid)
        ok(spent >= 5, "cont: the vCPU spins again", f"{spent} ticks")

        flat = await qmp.execute("human-monitor-command",
                                 {"command-line": "info mtree -f"})
        # --memory 4G: 3 GiB below the hole, 1 GiB above 4 GiB.
        ram_low = "0000000000100000-00000000bfffffff (prio 0, ram): pc.ram @0000000000100000"
        ram_high = "0000000100000000-000000013fffffff (prio 0, ram): pc.ram @00000000c0000000"
        ok(ram_low in flat and ram_high in flat, "info mtree -f: RAM around the PCI hole", flat)
        ram = []
        for line in flat.split("FlatView #1")[0].splitlines():
            if "ram): pc.ram" in line:
                start, end = line.split()[0].split("-")
                ram.append((int(start, 16), int(end, 16)))
        in_hole = [r for r in ram if r[0] < 1 << 32 and r[1] >= 0xC000_0000]
        ok(len(ram) == 3 and not in_hole, "info mtree -f: no RAM in the PCI hole", ram)
        listeners = await qmp.execute("human-monitor-command",
                                      {"command-line": "info listeners"})
        ok("kvm-memory" in listeners or "kvm" in listeners, "info listeners", listeners)

        try:
            await qmp.execute("no-such-command")
            ok(False, "unknown command fails")
        except ExecuteError as e:
            ok(e.error_class == "CommandNotFound", "unknown command: CommandNotFound")

        await qmp.execute("system_reset")
        ev = await next_event(listener, "RESET")
        ok(ev["data"] == {"guest": False, "reason": "host-qmp-system-reset"},
           "system_reset: RESET", ev)
        st = await qmp.execute("query-status")
        ok(st["status"] == "running", "running again after the reset", st)

        await qmp.execute("stop")
        await next_event(listener, "STOP")
        await qmp.execute("system_reset")
        await next_event(listener, "RESET")
        await asyncio.sleep(0.3)
        cpus = await qmp.execute("query-cpus-fast")
        st = await qmp.execute("query-status")
        spent = await burnt(pid, cpus[0]["thread-id"])
        ok(st["status"] == "paused" and spent <= 3,
           "a reset while stopped stays stopped", (st, spent))
        await qmp.execute("cont")
        await next_event(listener, "RESUME")
        spent = await burnt(pid, cpus[0]["thread-id"])
        ok(spent >= 5, "cont after the reset: the new vCPU runs", f"{spent} ticks")
        await qmp.execute("system_powerdown")
        await next_event(listener, "POWERDOWN")
        ok(True, "system_powerdown: POWERDOWN")

        await qmp.execute("quit")
        ev = await next_event(listener, "SHUTDOWN")
        ok(ev["data"] == {"guest": False, "reason": "host-qmp-quit"}, "quit: SHUTDOWN", ev)
    try:
        await qmp.disconnect()
    except Exception:  # the server is gone; that is the point
        pass


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
