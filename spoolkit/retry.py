"""Retry policy: how many attempts a job gets and how long it waits between them.

The raw spooler retries a file that returned ``SPOOL_RETRY`` on every scan,
forever and at once. The kit keeps uWSGI's mechanism (the file stays, its
mtime is the next ``at``) but decides *when* with :func:`compute_backoff`
and *whether* with :attr:`RetryPolicy.max_attempts`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_BACKOFF = 1.0
DEFAULT_MAX_BACKOFF = 3600.0
DEFAULT_JITTER = 0.2
#: More attempts than this is a mistake (and past SQLite's 64-bit integers, an error).
MAX_ATTEMPTS_LIMIT = 10_000


class Retry(Exception):
    """Raised by a task to ask for another attempt.

    It uses up an attempt like a failure does, but is logged as control flow,
    not as an error. ``countdown`` (seconds) overrides the backoff delay.
    """

    def __init__(self, countdown: float | None = None, reason: str = "") -> None:
        if countdown is not None:
            if isinstance(countdown, bool) or not isinstance(countdown, int | float):
                raise TypeError(
                    f"Retry(countdown=...) must be a number of seconds, got {countdown!r}"
                )
            if not math.isfinite(countdown) or countdown < 0:
                raise ValueError(f"Retry(countdown=...) must be >= 0 seconds, got {countdown!r}")
        super().__init__(reason or "retry requested")
        self.countdown = countdown


class GiveUp(Exception):
    """Raised by a task to fail its job at once, whatever attempts are left.

    For a failure no retry can mend (the input is wrong, the task declines
    the job). The job ends ``failed`` with this exception as its error.
    """


def compute_backoff(
    retry_number: int,
    *,
    base: float,
    cap: float = DEFAULT_MAX_BACKOFF,
    jitter: float = DEFAULT_JITTER,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds to wait before retry ``retry_number`` (1 for the first retry).

    ``base * 2 ** (n - 1)``, capped at ``cap``, then spread by +/- ``jitter``
    (a fraction) so jobs that failed together do not all come back together.
    The result never exceeds ``cap`` and is never negative.
    """
    if retry_number < 1:
        raise ValueError(f"retry_number starts at 1, got {retry_number}")
    if base <= 0:
        return 0.0
    exponent = min(retry_number - 1, 62)  # 2**62 * base is past any cap
    delay = min(cap, base * 2.0**exponent)
    spread = 1.0 - jitter + 2.0 * jitter * rand()
    return max(0.0, min(cap, delay * spread))


@dataclass(frozen=True)
class RetryPolicy:
    """A task's attempt budget and backoff base, validated when the task is declared."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff: float = DEFAULT_BACKOFF

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"max_attempts must be an int, got {self.max_attempts!r}")
        if not 1 <= self.max_attempts <= MAX_ATTEMPTS_LIMIT:
            raise ValueError(
                f"max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}, got {self.max_attempts}"
            )
        if isinstance(self.backoff, bool) or not isinstance(self.backoff, int | float):
            raise TypeError(f"backoff must be a number of seconds, got {self.backoff!r}")
        if not math.isfinite(self.backoff) or self.backoff < 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {self.backoff!r}")
