"""What the slixmpp peers and scenarios of the tests share: a JSON line out,
a failure that exits at once, a check, and a wait with a deadline."""

import asyncio
import json
import os
import sys

from slixmpp.exceptions import IqTimeout


def out(obj):
    """One JSON line on stdout, for the Rust side to read."""
    print(json.dumps(obj), flush=True)


def fail(why):
    print(f"FAIL: {why}", file=sys.stderr, flush=True)
    # At once: nothing (such as a thread blocked on stdin) may hold the exit up.
    os._exit(1)


def check(cond, why):
    if not cond:
        fail(why)


async def wait(aw, what, timeout=20):
    try:
        return await asyncio.wait_for(aw, timeout)
    except (asyncio.TimeoutError, IqTimeout):
        fail(f"timed out after {timeout}s waiting for {what}")
