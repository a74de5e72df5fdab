"""A benchmark process's own resident memory, read from /proc/self/status: now (VmRSS) and at
its peak since it started (VmHWM). Mapped file pages count in both while they are resident.

Not `ru_maxrss`: Linux carries the parent's resident size at the fork into a child's
`ru_maxrss` through the exec (a child of a parent holding 1 GiB reported 1.01 GiB, its own
VmHWM 13 MB), so a child of a parent that built a model first would report the parent's peak.
"""

from __future__ import annotations


def _status_gib(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) / 2**20 for line in status if line.startswith(field + ":"))


def resident_gib() -> float:
    """What this process holds resident now."""
    return _status_gib("VmRSS")


def peak_gib() -> float:
    """The most this process has held resident since it started."""
    return _status_gib("VmHWM")
