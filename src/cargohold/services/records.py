"""Values the services hand to entry points and caches."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    payload: bytes
    subject: str | None = None

    @property
    def size(self) -> int:
        return len(self.payload)
