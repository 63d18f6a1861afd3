"""calc-dirty-rate through QMP with QEMU's own client (qemu.qmp).

usage: qmp_dirty_rate.py SOCKET SERIAL_FILE MB_PER_S

Waits for the probe guest to start writing MB_PER_S MiB of distinct pages
per second, measures two seconds with calc-dirty-rate (dirty-bitmap mode),
and checks query-dirty-rate reports that rate within 25% (the guest's pacing
lags and catches up when the host is loaded; a logging fault is far off). Prints one
"ok - ..." line per check and "rate=N"; exits non-zero at the first that
fails.
"""

import asyncio
import os
import sys
import time

from qemu.qmp import ExecuteError, QMPClient

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from qmp_checks import ok, wait_serial  # noqa: E402


async def main():
    sock, serial, mb = sys.argv[1], sys.argv[2], int(sys.argv[3])
    qmp = QMPClient("dirty-rate-test")
    await qmp.connect(sock)
    first = await qmp.execute("query-dirty-rate")
    ok(first["status"] == "unstarted", "nothing measured yet", str(first))
    try:
        await qmp.execute("calc-dirty-rate", {"calc-time": 1, "mode": "dirty-ring"})
        ok(False, "an unsupported mode is refused")
    except ExecuteError as e:
        ok("dirty-bitmap" in str(e), "an unsupported mode is refused", str(e))
    ok(await wait_serial(serial, "dirtyrate: writing"), "the guest writes")
    await asyncio.sleep(0.3)
    await qmp.execute("calc-dirty-rate", {"calc-time": 2, "mode": "dirty-bitmap"})
    start = time.monotonic()
    while True:
        r = await qmp.execute("query-dirty-rate")
        if r["status"] == "measured" or time.monotonic() - start > 10:
            break
        await asyncio.sleep(0.05)
    ok(r["status"] == "measured", "the measurement ends", str(r))
    rate = r["dirty-rate"]
    print(f"rate={rate}", flush=True)
    ok(abs(rate - mb) <= mb / 4, f"dirty rate within 25% of {mb} MB/s", f"measured {rate}")
    text = await qmp.execute("human-monitor-command", {"command-line": "info dirty-log"})
    ok("pc.ram" in text and "global dirty logging: off" in text, "info dirty-log", text)
    try:
        await qmp.disconnect()
    except Exception:
        pass


asyncio.run(main())
