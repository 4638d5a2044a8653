"""Run Helm (PyPI helm-python-sdk, Helm v4 as a Go shared library) in a child process.

The Go runtime copies the environment when the library loads, so HOME/HELM_* set by
the test only take effect in a fresh process; a Go panic also cannot take pytest down.

Usage: python helm_driver.py < request.json  ->  prints one JSON result on stdout.
Request: {"chart_dir", "chart_name", "version", "package_dir", "remote" (oci://host/ns),
"pull_dir", "host", "credentials_file", "username", "password"} (on stdin: it holds a password)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    req = json.loads(sys.stdin.read())
    import helm_python as helm

    result: dict[str, object] = {"helm_sdk_version": helm.helm_sdk_version()}
    package = helm.package(req["chart_dir"], destination=req["package_dir"])
    result["package"] = package
    client = helm.RegistryClient(plain_http=True, credentials_file=req["credentials_file"])
    client.login(req["host"], req["username"], req["password"], plain_http=True)
    result["push"] = helm.push(package, req["remote"], client=client, plain_http=True)
    chart_ref = f"{req['remote']}/{req['chart_name']}"
    result["tags"] = client.tags(chart_ref)
    result["resolve"] = client.resolve(f"{chart_ref}:{req['version']}")
    Path(req["pull_dir"]).mkdir(parents=True, exist_ok=True)
    result["pull"] = helm.pull(
        chart_ref,
        client=client,
        version=req["version"],
        destination=req["pull_dir"],
        plain_http=True,
    )
    # (helm-python-sdk 0.2.2 rejects show(version=...): pass the tag in the reference)
    result["show"] = client.show(f"{chart_ref}:{req['version']}", plain_http=True)
    print(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
