"""Memory hotplug through QMP with QEMU's own client (qemu.qmp).

usage: qmp_hotplug.py SOCKET SERIAL_FILE add-remove|refused

add-remove: waits for the probe guest to wait for a DIMM, adds one
(object-add memory-backend-memfd + device_add pc-dimm), checks
query-memory-devices and `info mtree -f`, waits for the guest to have used
it, removes it (device_del) and waits for DEVICE_DELETED, then checks it is
gone. refused: the add must fail with an error naming the refusing
listener, and nothing of the DIMM may remain; then quit.

Prints one "ok - ..." line per check (and "dimm addr=... size=...") and
exits non-zero at the first that fails.
"""

import asyncio
import os
import sys
import time

from qemu.qmp import ExecuteError, QMPClient

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qmp_checks import ok, wait_serial  # noqa: E402

SIZE = 128 << 20



async def mtree(qmp):
    return await qmp.execute("human-monitor-command", {"command-line": "info mtree -f"})


async def add(qmp):
    await qmp.execute("object-add", {"qom-type": "memory-backend-memfd", "id": "mem1",
                                     "size": SIZE, "share": True})
    return await qmp.execute("device_add", {"driver": "pc-dimm", "id": "dimm1",
                                            "memdev": "mem1", "node": 0})


async def add_remove(qmp, serial):
    ok(await wait_serial(serial, "dimm: waiting"), "the guest waits for a DIMM")
    try:
        await qmp.execute("device_add", {"driver": "pc-dimm", "id": "x", "memdev": "nope"})
        ok(False, "device_add with an unknown memdev fails")
    except ExecuteError as e:
        ok("nope" in str(e), "device_add with an unknown memdev fails", str(e))
    await add(qmp)
    devs = await qmp.execute("query-memory-devices")
    ok(len(devs) == 1 and devs[0]["data"]["id"] == "dimm1", "query-memory-devices lists it",
       str(devs))
    d = devs[0]["data"]
    print(f"dimm addr={d['addr']:#x} size={d['size']:#x}", flush=True)
    ok(d["size"] == SIZE and d["memdev"] == "/objects/mem1", "it has the backend's size", str(d))
    ok("mem1" in await mtree(qmp), "info mtree -f shows it")
    ok(await wait_serial(serial, "dimm: used"), "the guest used the DIMM")
    deleted = None
    osts = []

    async def watch():
        nonlocal deleted
        async for ev in qmp.events:
            if ev["event"] == "ACPI_DEVICE_OST":
                osts.append(ev["data"]["info"])
            if ev["event"] == "DEVICE_DELETED":
                deleted = ev["data"]
                return

    task = asyncio.create_task(watch())
    await qmp.execute("device_del", {"id": "dimm1"})
    await asyncio.wait_for(task, 60)
    ok(deleted and deleted.get("device") == "dimm1", "DEVICE_DELETED arrives", str(deleted))
    ok(any(o.get("slot-type") == "DIMM" for o in osts), "ACPI_DEVICE_OST came with it", str(osts))
    ok("mem1" not in await mtree(qmp), "info mtree -f no longer shows it")
    ok(await qmp.execute("query-memory-devices") == [], "query-memory-devices is empty")
    await qmp.execute("object-del", {"id": "mem1"})
    ok(True, "the backend can be deleted")


async def refused(qmp, serial):
    ok(await wait_serial(serial, "dimm: waiting"), "the guest waits for a DIMM")
    try:
        await add(qmp)
        ok(False, "device_add fails")
    except ExecuteError as e:
        msg = str(e)
        print(f"error: {msg}", flush=True)
        ok("vhost:vhost-user-blk0" in msg and "ADD_MEM_REG" in msg,
           "device_add fails naming the listener", msg)
    ok(await qmp.execute("query-memory-devices") == [], "no memory device remains")
    ok("mem1" not in await mtree(qmp), "info mtree -f does not show it")
    await qmp.execute("object-del", {"id": "mem1"})
    ok(True, "the backend is free again")
    # The host checks the vfio-user server's maps now, then lets us quit.
    ready = os.path.join(os.path.dirname(serial), "ready")
    quit_file = os.path.join(os.path.dirname(serial), "quit")
    open(ready, "w").close()
    start = time.monotonic()
    while not os.path.exists(quit_file) and time.monotonic() - start < 60:
        await asyncio.sleep(0.02)
    await qmp.execute("quit")


async def main():
    sock, serial, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    qmp = QMPClient("hotplug-test")
    await qmp.connect(sock)
    if mode == "add-remove":
        await add_remove(qmp, serial)
    else:
        await refused(qmp, serial)
    try:
        await qmp.disconnect()
    except Exception:  # the VMM may have gone with the guest
        pass


asyncio.run(main())
