"""A small in-memory limit on failures: at most `limit` per key in any `window_s` seconds.

The studio keys password checks by account and by client address. An attempt is counted when it
starts and forgiven when it succeeds, so concurrent guesses cannot slip past the limit between
the check and the count. Memory is bounded: each key keeps at most `limit` times, and past
`max_keys` keys the one touched longest ago is forgotten (an attacker cycling names or addresses
keeps its own address or the target account the most recently touched, so those stay counted).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass


class TooManyAttempts(Exception):
    def __init__(self, retry_after: int):
        self.retry_after = retry_after
        super().__init__(f"too many wrong passwords; try again in {retry_after} s")


@dataclass(frozen=True)
class Attempt:
    keys: tuple[str, ...]
    at: float


class FailureLimiter:
    def __init__(self, limit: int, window_s: float, max_keys: int = 10_000, clock=time.monotonic):
        if limit < 1 or window_s <= 0 or max_keys < 1:
            raise ValueError("a limiter needs limit >= 1, window_s > 0 and max_keys >= 1")
        self.limit, self.window_s, self.max_keys, self.clock = limit, window_s, max_keys, clock
        self._times: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def attempt(self, *keys: str) -> Attempt:
        """Count an attempt against every key, or raise TooManyAttempts (counting nothing) when
        any key already has `limit` failures in the window."""
        with self._lock:
            now = self.clock()
            waits = [self._wait(key, now) for key in keys]
            if max(waits, default=0) > 0:
                raise TooManyAttempts(max(waits))
            for key in keys:
                times = self._times.pop(key, None) or deque(maxlen=self.limit)
                times.append(now)
                self._times[key] = times  # now the most recently touched
            while len(self._times) > self.max_keys:
                self._times.popitem(last=False)
            return Attempt(keys, now)

    def forgive(self, attempt: Attempt) -> None:
        """The attempt succeeded: it is not a failure."""
        with self._lock:
            for key in attempt.keys:
                times = self._times.get(key)
                if times is not None and attempt.at in times:
                    times.remove(attempt.at)
                    if not times:
                        del self._times[key]

    def tracked(self) -> int:
        """How many keys are remembered (at most `max_keys`)."""
        return len(self._times)

    def _wait(self, key: str, now: float) -> int:
        """Whole seconds until `key` may try again (0: now); drops failures older than the window."""
        times = self._times.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._times[key]
            return 0
        if len(times) < self.limit:
            return 0
        return max(1, math.ceil(times[0] + self.window_s - now))
