"""What the QMP client scripts of the suites share: TAP-like check lines
and waiting for the guest's serial output."""

import asyncio
import sys
import time


def ok(cond, what, detail=""):
    """Prints "ok - what detail", or "not ok - ..." and exits non-zero."""
    if not cond:
        print(f"not ok - {what} {detail}", flush=True)
        sys.exit(1)
    print(f"ok - {what} {detail}".rstrip(), flush=True)


async def wait_serial(path, marker, timeout=60):
    """Waits up to `timeout` seconds for `marker` in the COM1 file."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                if marker in f.read():
                    return True
        except FileNotFoundError:
            pass
        await asyncio.sleep(0.02)
    return False
