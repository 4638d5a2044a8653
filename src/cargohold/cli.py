"""The `cargohold` command: serve, migrate, config check."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from cargohold import __version__
from cargohold.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="cargohold: an OCI container image registry.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")

ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML configuration file.", exists=False)
]


def _load(config: Path | None) -> Settings:
    try:
        return load_settings(config)
    except SettingsError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


def _migrate(settings: Settings) -> None:
    from cargohold.db.migrate import upgrade

    upgrade(settings.database.url)


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Migrate the database if needed, then serve the registry."""
    from granian import Granian
    from granian.constants import Interfaces, Loops

    settings = _load(config)
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    workers = workers or settings.server.workers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _migrate(settings)
    if config is not None:
        os.environ["CARGOHOLD_CONFIG_FILE"] = str(config.resolve())
    os.environ.setdefault("CARGOHOLD_DATA_DIR", settings.data_dir)
    where = f"{host}:{port}"
    typer.echo(
        f"cargohold {__version__} serving the OCI registry API on http://{where}/v2/\n"
        f"  database: {Settings.masked(settings)['database']['url']}\n"
        f"  storage:  {settings.storage.driver} {settings.storage.filesystem.root}\n"
        "  No login is needed yet: the registry is open to anyone who can reach it.\n"
        f"  Try: skopeo copy --dest-tls-verify=false docker-archive:img.tar "
        f"docker://{where}/myteam/app:latest\n"
        f"  docker/podman: add {where} to insecure-registries, then push {where}/<namespace>/<name>"
    )
    # granian: its ASGI server offers `http.response.pathsend`, so blobs go out zero-copy
    # (docs/perf/README.md has the measurements behind this choice).
    Granian(
        "cargohold.app:app_from_environment",
        factory=True,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        websockets=False,
        log_access=settings.server.access_log,
        backlog=2048,
        # A worker that ignores the stop signal is killed after this many seconds, so a
        # SIGTERM or Ctrl-C always ends the server.
        workers_kill_timeout=10,
    ).serve()


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Bring the database schema up to date."""
    settings = _load(config)
    _migrate(settings)
    typer.echo("database is up to date")


@config_app.command("check")
def config_check(file: Annotated[Path | None, typer.Argument(help="YAML file.")] = None) -> None:
    """Validate the configuration and print the effective settings, secrets masked."""
    settings = _load(file)
    typer.echo(json.dumps(settings.masked(), indent=2))
    typer.echo("configuration is valid", err=True)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app(prog_name="cargohold")


if __name__ == "__main__":
    main()
