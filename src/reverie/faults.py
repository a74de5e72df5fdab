"""A test hook: crash at a named point, to test what survives a kill -9.

`REVERIE_CRASH_AT=NAME` (or `NAME:N`) makes the process kill itself with SIGKILL (no cleanup,
nothing flushed, as a power cut or the OOM killer would) the first (or Nth) time it reaches
`crash_point(NAME)`; SQLite and PostgreSQL test their durability the same way. `NAME:N:TERM` (or
`:INT`) sends that signal instead, once, and goes on: a stop asked for at a known moment (a worker
told to stop mid-job). Unset, it does nothing. The points:

- `after-image-file`: a picture's file is in the gallery, its row not yet;
- `after-image-row`: a picture's file and row are both in.
"""

from __future__ import annotations

import os
import signal
from collections import Counter

_reached: Counter = Counter()


def crash_point(name: str) -> None:
    wanted = os.environ.get("REVERIE_CRASH_AT")
    if not wanted:
        return
    point, _, rest = wanted.partition(":")
    if point != name:
        return
    nth, _, how = rest.partition(":")
    _reached[name] += 1
    if _reached[name] == int(nth or 1):
        os.kill(os.getpid(), getattr(signal, f"SIG{how or 'KILL'}", signal.SIGTERM))
