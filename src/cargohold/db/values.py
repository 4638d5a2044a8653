"""Column values as hand-written SQL returns them, made the same on both databases:
SQLite returns booleans as 0/1 and datetimes as naive UTC text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def as_datetime(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def as_bool(value: Any) -> bool:
    return bool(value)
