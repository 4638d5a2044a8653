"""Retry delays of the job queue: exponential, capped, jittered, and growing."""

from __future__ import annotations

from cargohold.jobs import queue


def test_retry_delays_grow_with_jitter_up_to_the_cap() -> None:
    assert queue.retry_delay(1, 10, 3600, rand=lambda: 0.0) == 5
    assert queue.retry_delay(1, 10, 3600, rand=lambda: 1.0) == 10
    assert queue.retry_delay(3, 10, 3600, rand=lambda: 0.0) == 20
    assert queue.retry_delay(3, 10, 3600, rand=lambda: 1.0) == 40
    assert queue.retry_delay(30, 10, 3600, rand=lambda: 1.0) == 3600
    for attempt in range(1, 12):  # the shortest delay of one attempt is the longest of the last
        assert queue.retry_delay(attempt + 1, 10, 1e9, rand=lambda: 0.0) >= queue.retry_delay(
            attempt, 10, 1e9, rand=lambda: 1.0
        )
