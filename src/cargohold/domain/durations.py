"""Durations as people write them: 30s, 90m, 12h, 2w, 14d."""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX = timedelta(days=3650)


class DurationError(ValueError):
    pass


def parse_duration(text: str) -> timedelta:
    m = _DURATION.fullmatch(text.strip())
    if m is None:
        raise DurationError(f"{text!r} is not a duration such as 30m, 12h, 14d or 2w")
    # Compared as seconds first: 999999999w is past what a timedelta can hold.
    seconds = int(m.group(1)) * _UNITS[m.group(2)]
    if not 0 < seconds <= MAX.total_seconds():
        raise DurationError(f"{text!r} must be more than zero and at most 10 years")
    return timedelta(seconds=seconds)
