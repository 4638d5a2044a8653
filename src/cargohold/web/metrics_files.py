"""Where the worker processes of one `cargohold serve` keep their metrics:
<data_dir>/run/metrics/<pid of serve>/, named to prometheus_client by the environment
variable PROMETHEUS_MULTIPROC_DIR, which must be set before prometheus_client is first
imported (it picks its storage then). This module does not import it for that reason.

Each `serve` gets its own folder, emptied at start, so servers sharing a data directory
never add up each other's figures; folders of servers that are gone are removed."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def alive(pid: int) -> bool:
    """Whether a process `pid` exists (signal 0 checks without sending anything)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir(data_dir: str | Path) -> Path:
    """Create this server's (empty) metrics folder, drop those of dead servers, and point
    PROMETHEUS_MULTIPROC_DIR at it for this process and the workers it starts."""
    base = Path(data_dir) / "run" / "metrics"
    base.mkdir(parents=True, exist_ok=True)
    own = base / str(os.getpid())
    for entry in base.iterdir():
        if entry == own or (entry.name.isdigit() and not alive(int(entry.name))):
            shutil.rmtree(entry, ignore_errors=True)
        elif entry.is_file():  # anything else left by hand or by another version
            with contextlib.suppress(OSError):
                entry.unlink()
    own.mkdir(mode=0o700)
    os.environ[ENV] = str(own)
    return own
