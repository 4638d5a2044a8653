"""The generated secret key file (<data_dir>/run/secret-key) when several processes of one
data directory start at once: they all end with the same complete key."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from cryptography.fernet import Fernet

from cargohold.auth.keys import load_or_create_secret_key


def _load(
    data_dir: str, barrier: multiprocessing.synchronize.Barrier, out: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    barrier.wait()
    out.put(load_or_create_secret_key("", data_dir))


def test_processes_starting_together_share_one_complete_key(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    for attempt in range(5):
        data_dir = tmp_path / f"data{attempt}"
        barrier = context.Barrier(8)
        out = context.Queue()
        workers = [
            context.Process(target=_load, args=(str(data_dir), barrier, out)) for _ in range(8)
        ]
        for w in workers:
            w.start()
        keys = [out.get(timeout=30) for _ in workers]
        for w in workers:
            w.join(timeout=30)
            assert w.exitcode == 0
        assert len(set(keys)) == 1
        Fernet(keys[0])  # a whole key, not an empty or partial file
        assert (data_dir / "run" / "secret-key").read_bytes().strip() == keys[0]
        assert sorted(p.name for p in (data_dir / "run").iterdir()) == ["secret-key"]
        assert (data_dir / "run" / "secret-key").stat().st_mode & 0o777 == 0o600
