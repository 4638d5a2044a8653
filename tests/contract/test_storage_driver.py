"""The storage driver contract, run against every driver."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cargohold.storage.driver import InvalidKey, ObjectNotFound, StorageDriver
from cargohold.storage.filesystem import FilesystemDriver
from cargohold.storage.memory import MemoryDriver


@pytest.fixture(params=["filesystem", "memory", "s3"])
def driver(request: pytest.FixtureRequest, tmp_path: Path) -> StorageDriver:
    if request.param == "filesystem":
        return FilesystemDriver(tmp_path / "root")
    if request.param == "s3":  # SeaweedFS, started once for the session (conftest.py)
        s3: StorageDriver = request.getfixturevalue("s3_driver")
        return s3
    return MemoryDriver()


async def _collect(it: AsyncIterator[bytes]) -> bytes:
    return b"".join([chunk async for chunk in it])


async def test_put_get_stat_delete(driver: StorageDriver) -> None:
    await driver.put_bytes("blobs/sha256/ab/abc", b"hello")
    assert await driver.get_bytes("blobs/sha256/ab/abc") == b"hello"
    info = await driver.stat("blobs/sha256/ab/abc")
    assert info.size == 5
    await driver.put_bytes("blobs/sha256/ab/abc", b"replaced")
    assert await driver.get_bytes("blobs/sha256/ab/abc") == b"replaced"
    await driver.delete("blobs/sha256/ab/abc")
    with pytest.raises(ObjectNotFound):
        await driver.stat("blobs/sha256/ab/abc")
    await driver.delete("blobs/sha256/ab/abc")  # deleting twice is fine


async def test_missing_objects_raise(driver: StorageDriver) -> None:
    with pytest.raises(ObjectNotFound):
        await driver.get_bytes("uploads/nothing")
    with pytest.raises(ObjectNotFound):
        await _collect(driver.read("uploads/nothing"))


async def test_read_ranges(driver: StorageDriver) -> None:
    data = bytes(range(256)) * 9000  # > 2 MiB: several read chunks
    await driver.put_bytes("blobs/x", data)
    assert await _collect(driver.read("blobs/x")) == data
    assert await _collect(driver.read("blobs/x", 100)) == data[100:]
    assert await _collect(driver.read("blobs/x", 5, 10)) == data[5:15]
    assert await _collect(driver.read("blobs/x", 1_500_000, 1_000_000)) == data[1_500_000:2_500_000]


async def test_writer_appends_and_truncates_to_offset(driver: StorageDriver) -> None:
    w = await driver.writer("uploads/u1")
    await w.write(b"abc")
    await w.write(b"def")
    assert w.size == 6
    await w.close()
    w = await driver.writer("uploads/u1", offset=6)
    await w.write(b"ghi")
    await w.close()
    assert await driver.get_bytes("uploads/u1") == b"abcdefghi"
    # Reopening at an earlier offset discards what lies beyond it (a cut-off PATCH).
    w = await driver.writer("uploads/u1", offset=3)
    await w.write(b"XYZ")
    await w.close()
    assert await driver.get_bytes("uploads/u1") == b"abcXYZ"


async def test_commit_moves_atomically(driver: StorageDriver) -> None:
    w = await driver.writer("uploads/u2")
    await w.write(b"payload")
    await w.close()
    await driver.commit("uploads/u2", "blobs/sha256/pa/payload")
    assert await driver.get_bytes("blobs/sha256/pa/payload") == b"payload"
    with pytest.raises(ObjectNotFound):
        await driver.stat("uploads/u2")


async def test_walk_lists_everything_below_a_prefix(driver: StorageDriver) -> None:
    for key in ["uploads/a", "uploads/b", "blobs/sha256/aa/c"]:
        await driver.put_bytes(key, b"1")
    keys = sorted([info.key async for info in driver.walk("uploads")])
    assert keys == ["uploads/a", "uploads/b"]
    await driver.delete("uploads")
    assert [info.key async for info in driver.walk("uploads")] == []
    assert await driver.get_bytes("blobs/sha256/aa/c") == b"1"


@pytest.mark.parametrize(
    "key", ["../etc/passwd", "/abs", "blobs/../../x", "blobs/./x", "", "blobs//x", "Blobs/x"]
)
async def test_invalid_keys_are_refused(driver: StorageDriver, key: str) -> None:
    with pytest.raises(InvalidKey):
        await driver.put_bytes(key, b"x")
    with pytest.raises(InvalidKey):
        await driver.stat(key)


def test_filesystem_paths_stay_under_the_root(tmp_path: Path) -> None:
    driver = FilesystemDriver(tmp_path / "root")
    path = driver.local_path("blobs/sha256/ab/abcd")
    assert path is not None and path.is_relative_to(tmp_path / "root")
    assert MemoryDriver().local_path("blobs/x") is None


async def test_exclusive_is_a_context(driver: StorageDriver) -> None:
    async with driver.exclusive("uploads/u3"):
        await driver.put_bytes("uploads/u3", b"held")
    assert await driver.get_bytes("uploads/u3") == b"held"


async def test_filesystem_exclusive_keeps_other_processes_out(tmp_path: Path) -> None:
    import fcntl
    import os

    driver = FilesystemDriver(tmp_path / "root")
    async with driver.exclusive("uploads/u4"):
        path = driver.local_path("uploads/u4")
        assert path is not None
        fd = os.open(path, os.O_RDWR)  # another open file, as another process has
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again once released
    finally:
        os.close(fd)
