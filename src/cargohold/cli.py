"""The `cargohold` command: serve, migrate, config check."""

from __future__ import annotations

import asyncio
import json
import logging
import math
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
quota_app = typer.Typer(help="Storage usage and quotas.", no_args_is_help=True)
app.add_typer(quota_app, name="quota")

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


def _storage_place(settings: Settings) -> str:
    if settings.storage.driver == "s3":
        s3 = settings.storage.s3
        return f"{s3.endpoint_url or 'AWS'} bucket {s3.bucket} {s3.prefix}".rstrip()
    return settings.storage.filesystem.root


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
    if settings.metrics.enabled:
        from cargohold.web.metrics_files import prepare_multiprocess_dir

        # Before anything imports prometheus_client: the workers sum their figures there.
        prepare_multiprocess_dir(settings.data_dir)
    host = host or settings.server.host
    port = port if port is not None else settings.server.port
    workers = workers or settings.server.workers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    login = _prepare_in_child(config)
    if config is not None:
        os.environ["CARGOHOLD_CONFIG_FILE"] = str(config.resolve())
    os.environ.setdefault("CARGOHOLD_DATA_DIR", settings.data_dir)
    where = f"{host}:{port}"
    typer.echo(
        f"cargohold {__version__} serving the OCI registry API on http://{where}/v2/\n"
        f"  database: {Settings.masked(settings)['database']['url']}\n"
        f"  storage:  {settings.storage.driver} {_storage_place(settings)}\n"
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
        # On SIGTERM granian stops accepting at once, waits for the requests in flight,
        # then runs the lifespan's shutdown (which stops the background work); a worker
        # still alive after this many seconds is killed, so a stop always ends the server.
        workers_kill_timeout=shutdown_seconds(settings),
    ).serve()


def shutdown_seconds(settings: Settings) -> int:
    """How long granian lets a stopping worker run before it kills it: the requests in
    flight get `server.shutdown_timeout_seconds`, then the background work its
    `jobs.stop_seconds`, and closing a few seconds more."""
    background = settings.jobs.stop_seconds if settings.jobs.run_in_web else 0.0
    return math.ceil(settings.server.shutdown_timeout_seconds + background + 5)


def _prepare(config: str) -> None:
    """In the child of `_prepare_in_child`: migrate, bootstrap, print the banner's login
    lines as JSON on stdout (logs go to stderr)."""
    settings = _load(Path(config) if config else None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _migrate(settings)
    sys.stdout.write(json.dumps(asyncio.run(_bootstrap_admin(settings))) + "\n")


def _prepare_in_child(config: Path | None) -> str:
    """Migrate and create the first superuser in a process of their own: granian forks its
    workers from this one, and each would otherwise carry Alembic, the migrations and the
    whole application loaded here (about 40 MiB per worker) on top of its own copy. A plain
    subprocess, not multiprocessing's spawn, which would leave its resource tracker behind
    as a child of the server."""
    import subprocess

    code = "import sys; from cargohold.cli import _prepare; _prepare(sys.argv[1])"
    where = str(config.resolve()) if config is not None else ""
    done = subprocess.run(
        [sys.executable, "-c", code, where], stdout=subprocess.PIPE, text=True, check=False
    )
    if done.returncode != 0:
        raise typer.Exit(done.returncode)
    return str(json.loads(done.stdout.strip().splitlines()[-1]))


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


@quota_app.command("recalculate")
def quota_recalculate(
    check: Annotated[
        bool, typer.Option("--check", help="Only report differences; change nothing.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Recalculate storage usage from the blob links and compare it with the figures kept
    on every push (docs/quotas.md). Prints each difference; without --check, corrects it.
    Exits 1 when --check finds a difference."""
    settings = _load(config)
    _migrate(settings)

    async def run() -> list[Any]:
        from cargohold.app import build_runtime

        runtime = build_runtime(settings)
        try:
            quotas = runtime.quotas
            return await (quotas.check() if check else quotas.recalculate())
        finally:
            await runtime.close()

    found = _run(run())
    for d in found:
        if d.kind == "namespace_blob":
            typer.echo(f"namespace_blob {d.name}: {d.stored} blob reference counts differ")
        else:
            typer.echo(f"{d.kind} {d.name}: stored {d.stored}, recalculated {d.recalculated}")
    if not found:
        typer.echo("usage figures agree with a recalculation")
    elif check:
        raise typer.Exit(1)
    else:
        typer.echo(f"corrected {len(found)} figures")


@app.command()
def worker(
    config: ConfigOption = None,
    kinds: Annotated[
        str | None,
        typer.Option(
            "--kinds",
            help="Only these job kinds and periodic tasks, comma-separated (e.g. gc,expire-tags).",
        ),
    ] = None,
) -> None:
    """Run background work without serving: the job queue's workers and the periodic
    tasks (garbage collection whatever gc.enabled says, tag expiry, purges, audit
    retention), each periodic task once across all replicas. Beside `serve` with
    jobs.run_in_web false, or on another host of the same database and storage."""
    from cargohold.app import run_worker
    from cargohold.jobs.background import UnknownKinds

    settings = _load(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    wanted = {k.strip() for k in kinds.split(",") if k.strip()} if kinds is not None else None
    _migrate(settings)
    try:
        _run(run_worker(settings, kinds=wanted))
    except UnknownKinds as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command("gc")
def gc_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Count what would be deleted; delete nothing.")
    ] = False,
    once: Annotated[
        bool, typer.Option("--once", help="One pass, printed as JSON, then exit.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Collect garbage: one pass with --once, else the deployment's periodic pass every
    gc.interval_seconds until stopped (as `cargohold worker --kinds gc`: one pass at a
    time across all replicas). --once waits for a pass running on this host; with
    --dry-run and without --once, this process counts on its own clock."""
    from cargohold.app import build_runtime, make_collector, run_worker

    settings = _load(config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    _migrate(settings)
    if not once:
        _run(run_worker(settings, gc_only=True, dry_run=dry_run or None))
        return

    async def one_pass() -> dict[str, Any]:
        runtime = build_runtime(settings)
        try:
            run = await make_collector(runtime).run_once(dry_run or None, wait=True)
            assert run is not None  # waited for the lock
            return run.as_json()
        finally:
            await runtime.close()

    result = _run(one_pass())
    typer.echo(json.dumps(result, indent=2))
    if result["error"]:
        raise typer.Exit(1)


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Bring the database schema up to date."""
    settings = _load(config)
    _migrate(settings)
    typer.echo("database is up to date")


@config_app.command("check")
def config_check(
    file: Annotated[Path | None, typer.Argument(help="YAML file.")] = None,
    online: Annotated[
        bool,
        typer.Option(
            "--online",
            help="Also connect to the database, the storage, Redis and the identity provider.",
        ),
    ] = False,
    timeout: Annotated[
        float, typer.Option(help="Seconds each --online check may take.", min=0.1)
    ] = 5.0,
) -> None:
    """Validate the configuration and print the effective settings, secrets masked. With
    --online, then check each configured service (as GET /health/endtoend does) and exit
    1 naming those that fail."""
    settings = _load(file)
    typer.echo(json.dumps(settings.masked(), indent=2))
    typer.echo("configuration is valid", err=True)
    if not online:
        return
    from cargohold.services.health import check_online

    results = _run(check_online(settings, seconds=timeout))
    for r in results:
        if r.ok:
            typer.echo(f"{r.name}: ok ({r.ms:.0f} ms)", err=True)
        else:
            typer.echo(f"{r.name}: FAILED: {r.error}", err=True)
    failed = [r.name for r in results if not r.ok]
    if failed:
        typer.echo(f"unreachable: {', '.join(failed)}", err=True)
        raise typer.Exit(1)
    typer.echo("every configured service answers", err=True)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app(prog_name="cargohold")


if __name__ == "__main__":
    main()
