"""The `cargohold` command: serve, migrate, config check."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cargohold import __version__
from cargohold.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="cargohold: an OCI container image registry.", no_args_is_help=True)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")
user_app = typer.Typer(help="Manage user accounts.", no_args_is_help=True)
app.add_typer(user_app, name="user")
token_app = typer.Typer(help="Issue app-specific tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")

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
    login = asyncio.run(_bootstrap_admin(settings))
    if config is not None:
        os.environ["CARGOHOLD_CONFIG_FILE"] = str(config.resolve())
    os.environ.setdefault("CARGOHOLD_DATA_DIR", settings.data_dir)
    where = f"{host}:{port}"
    typer.echo(
        f"cargohold {__version__} serving the OCI registry API on http://{where}/v2/\n"
        f"  database: {Settings.masked(settings)['database']['url']}\n"
        f"  storage:  {settings.storage.driver} {settings.storage.filesystem.root}\n"
        f"{login}"
        f"  Log in:   docker login {where} -u <user>   (podman login, skopeo login alike;\n"
        f"            docker/podman need {where} in insecure-registries for plain HTTP)\n"
        f"  Then:     docker push {where}/<your user or organization>/<name>:<tag>"
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


async def _bootstrap_admin(settings: Settings) -> str:
    """Create the first superuser on an empty database; how to log in, for the banner.
    Without a configured password, one is generated into <data_dir>/initial-admin-password."""
    from cargohold.app import build_runtime

    auth = settings.auth
    runtime = build_runtime(settings)
    try:
        if await runtime.users.count() > 0:
            return "  Accounts: log in with yours (`cargohold user create` adds one).\n"
        password = auth.initial_admin_password.get_secret_value()
        where = "from auth.initial_admin_password"
        if not password:
            password = secrets.token_urlsafe(18)
            path = Path(settings.data_dir) / "initial-admin-password"
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(password + "\n")
            where = f"in {path}"
        await runtime.users.create(auth.initial_admin_user, password, superuser=True)
        return f"  Created the superuser '{auth.initial_admin_user}'; its password is {where}.\n"
    finally:
        await runtime.close()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


@user_app.command("create")
def user_create(
    name: Annotated[str, typer.Argument(help="User name (also the user's namespace).")],
    email: Annotated[str | None, typer.Option(help="E-mail address.")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    superuser: Annotated[bool, typer.Option(help="Make the user a superuser.")] = False,
    config: ConfigOption = None,
) -> None:
    """Create a user in the database (the first superuser, robots' owners, scripts)."""
    from cargohold.domain.errors import NameInvalid
    from cargohold.services.users import UserError

    settings = _load(config)
    _migrate(settings)
    password = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    if password is None:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)

    async def create() -> None:
        from cargohold.app import build_runtime

        runtime = build_runtime(settings)
        try:
            await runtime.users.create(name, password, email=email, superuser=superuser)
        finally:
            await runtime.close()

    try:
        _run(create())
    except (UserError, NameInvalid) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"created user {name}" + (" (superuser)" if superuser else ""))


@token_app.command("create")
def token_create(
    user: Annotated[str, typer.Argument(help="The user the token acts for.")],
    name: Annotated[str, typer.Option("--name", help="A title to recognise the token by.")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="API scope (repeatable), e.g. repo:read.")
    ] = None,
    expires: Annotated[
        str | None, typer.Option(help="Lifetime such as 30d, 12h, 90m (default: never).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Issue an app-specific token for USER and print it once. It works as the password
    of `docker login` (user name `$app` or the user's) and as a bearer token on /api/v1."""
    from cargohold.domain.durations import DurationError, parse_duration
    from cargohold.services.credentials import CredentialError

    settings = _load(config)
    _migrate(settings)
    try:
        lifetime = parse_duration(expires) if expires else None
    except DurationError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc

    async def issue() -> str:
        from cargohold.app import build_runtime
        from cargohold.db.base import utcnow

        runtime = build_runtime(settings)
        try:
            principal = await runtime.authenticator.user(user)
            if principal is None or principal.id is None:
                raise CredentialError(f"no enabled user {user!r}")
            token, _ = await runtime.credentials.issue(
                "app",
                principal.id,
                title=name,
                scopes=scope or [],
                expires_at=utcnow() + lifetime if lifetime else None,
            )
            return token
        finally:
            await runtime.close()

    try:
        token = _run(issue())
    except CredentialError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(token)


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
