"""One typed settings tree, validated whole at start-up.

Sources, lowest first: defaults, an optional YAML file, then CARGOHOLD_* environment
variables with `__` for nesting (CARGOHOLD_DATABASE__URL). Unknown keys are errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)


class SettingsError(Exception):
    """The configuration is invalid; the message says where and why."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(5000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=64)
    access_log: bool = False


class DatabaseSettings(_Strict):
    # Empty means SQLite at <data_dir>/cargohold.db.
    url: str = ""
    pool_size: int = Field(10, ge=1, le=200)
    echo: bool = False
    # SQLite only. "normal": a commit survives the process being killed; "full": it also
    # survives power loss (an fsync per commit, run off the event loop).
    sqlite_synchronous: Literal["normal", "full"] = "normal"


class FilesystemStorageSettings(_Strict):
    # Empty means <data_dir>/storage.
    root: str = ""
    fsync: bool = True


class StorageSettings(_Strict):
    driver: Literal["filesystem", "memory"] = "filesystem"
    filesystem: FilesystemStorageSettings = FilesystemStorageSettings()


class RegistrySettings(_Strict):
    max_manifest_bytes: int = Field(4 * 1024 * 1024, ge=1024, le=64 * 1024 * 1024)
    max_blob_bytes: int = Field(64 * 1024**3, ge=1)
    max_page_size: int = Field(1000, ge=1, le=100_000)
    # tags/list without `n` answers the whole list up to this many tags (as Distribution
    # does, and as clients that never follow Link headers expect), then pages.
    max_tag_list: int = Field(100_000, ge=1, le=1_000_000)
    upload_max_age_seconds: int = Field(24 * 3600, ge=1)
    upload_purge_interval_seconds: int = Field(3600, ge=1)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CARGOHOLD_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: str = "./var"
    server: ServerSettings = ServerSettings()
    database: DatabaseSettings = DatabaseSettings()
    storage: StorageSettings = StorageSettings()
    registry: RegistrySettings = RegistrySettings()

    @model_validator(mode="after")
    def _fill_paths(self) -> Settings:
        data = Path(self.data_dir)
        if not self.database.url:
            self.database.url = f"sqlite:///{(data / 'cargohold.db').as_posix()}"
        if not self.storage.filesystem.root:
            self.storage.filesystem.root = str(data / "storage")
        if not self.database.url.startswith(("sqlite:", "postgresql:", "postgresql+psycopg:")):
            raise ValueError("database.url must be sqlite:///PATH or postgresql://...")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment variables win over the file, which is passed as init values.
        return (env_settings, init_settings)

    def masked(self) -> dict[str, Any]:
        """The effective settings with secrets hidden, for `config check`."""
        out = self.model_dump()
        url: str = out["database"]["url"]
        if "@" in url and ":" in url.split("@", 1)[0].split("//", 1)[-1]:
            scheme, rest = url.split("//", 1)
            user = rest.split(":", 1)[0]
            out["database"]["url"] = f"{scheme}//{user}:***@{rest.split('@', 1)[1]}"
        return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"{path} must hold a mapping at the top level")
    return data


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"  {where}: {msg}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    """Load and validate everything; raise SettingsError with every problem listed."""
    values: dict[str, Any] = _read_yaml(Path(path)) if path else {}
    for key, value in overrides.items():
        values[key] = value
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from exc


__all__ = ["InitSettingsSource", "Settings", "SettingsError", "load_settings"]
