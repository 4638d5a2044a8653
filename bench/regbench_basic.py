#!/usr/bin/env python3
"""Run regbench with HTTP Basic credentials sent on every request to some targets.

    python3 bench/regbench_basic.py REGBENCH HOST:PORT[,HOST:PORT...] compare ...

regbench learns how to authenticate from a registry's first 401: Basic when the challenge
says Basic, the Docker token flow when it says Bearer. cargohold always answers Bearer (what
docker and podman expect) but also accepts Basic on /v2 directly, as scripts with
`curl -u` use it. To measure that mode, this wrapper loads regbench unchanged and starts
the clients of the targets at the listed HOST:PORT addresses in its Basic mode: the
credentials of their URL (http://user:password@host:port) go on every request, no 401 and
no token endpoint on the way. Every other target, and everything else regbench does, stays
as it is.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any


def load_regbench(path: Path) -> Any:
    spec = importlib.util.spec_from_file_location("regbench", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load regbench from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["regbench"] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def send_basic_to(regbench: Any, addresses: set[str]) -> None:
    """Patch regbench.Registry so that clients of `addresses` start in Basic mode."""
    registry = regbench.Registry
    if not all(hasattr(registry, a) for a in ("_auth_for", "_on_unauthorized")):
        raise SystemExit("this regbench's Registry does not fit the wrapper (regbench 1.0 does)")
    original_init, original_unauthorized = registry.__init__, registry._on_unauthorized

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.basic_only = f"{self.host}:{self.port}" in addresses
        if self.basic_only:
            if not self._basic:
                raise regbench.BenchError(f"{self.base}: Basic up front needs credentials")
            self._auth_kind = "basic"

    def on_unauthorized(self: Any, resp: Any, scopes: Any) -> None:
        # A 401 to Basic credentials is a failure here, not a hint to fetch a token: the
        # figures of this target must be those of Basic auth.
        if self.basic_only:
            raise regbench.BenchError(f"{resp.url} refused the Basic credentials (401)")
        original_unauthorized(self, resp, scopes)

    registry.__init__ = init
    registry._on_unauthorized = on_unauthorized


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    regbench = load_regbench(Path(argv[0]))
    send_basic_to(regbench, {a for a in argv[1].split(",") if a})
    sys.argv = [argv[0], *argv[2:]]  # regbench records its command line in the JSON
    return int(regbench.main(argv[2:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
