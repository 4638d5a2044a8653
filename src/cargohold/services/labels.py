"""Labels of manifests: key/value pairs taken from the content when a manifest is first
stored (the image config's `config.Labels` and the manifest's `annotations`, source
"manifest"), or added through the API (source "api").

Content labels are read within bounds: the config is read only when the manifest is new
to the repository and its config descriptor names a blob linked into the repository with
that very size, and at most MAX_CONFIG_BYTES of it (a pusher cannot make the registry load
some large blob by naming it as a tiny config). A config above the limit, or one that is
not JSON, gives no labels; pairs with a key or value too long for the table (or text the
databases cannot hold) are skipped, and at most MAX_CONTENT_LABELS are kept.
The label `quay.expires-after` (`2w`, `12h`, `30m`, `90s`) on a tagged push makes the
new tag expire that long after the push, unless the tag is immutable; a push of a
manifest already stored takes it from the labels stored with it."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from cargohold.db.base import utcnow
from cargohold.db.session import Database, DbSession
from cargohold.db.sql import sql
from cargohold.domain.durations import DurationError, parse_duration
from cargohold.domain.manifests import Descriptor, ParsedManifest
from cargohold.storage import layout
from cargohold.storage.driver import ObjectReader, StorageError

EXPIRES_AFTER = "quay.expires-after"
MAX_CONFIG_BYTES = 1 << 20
MAX_CONTENT_LABELS = 256
MAX_KEY = 255
MAX_VALUE = 4096

Label = tuple[str, str]

INSERT = sql(
    "INSERT INTO manifest_label (manifest_id, key, value, source, created_at) "
    "VALUES (:manifest_id, :key, :value, :source, :now)"
)
# Before a push, in one round trip: whether the repository stores the manifest already,
# and the size of the config blob as linked into the repository (if it is).
PUSH_STATE = sql(
    """SELECT (SELECT m.id FROM manifest m
               WHERE m.repository_id = r.id AND m.digest = :digest),
              (SELECT b.size FROM blob b JOIN repository_blob rb ON rb.blob_id = b.id
               WHERE rb.repository_id = r.id AND b.digest = :config)
       FROM repository r WHERE r.name = :repository"""
)
STORED_EXPIRES_AFTER = sql(
    "SELECT key, value FROM manifest_label WHERE manifest_id = :id AND key = :key "
    "AND source = 'manifest' ORDER BY id"
)


class ConfigUnread(Exception):
    """A push found its manifest stored and skipped the config, then had to store it
    after all (deleted meanwhile): read the config and run the transaction again."""


def usable(key: str, value: str) -> bool:
    """Whether the pair fits the table and both databases (no NUL, no lone surrogate)."""
    if not 0 < len(key) <= MAX_KEY or len(value) > MAX_VALUE:
        return False
    if not key.isprintable() or "\x00" in value:
        return False
    try:
        key.encode()
        value.encode()
    except UnicodeEncodeError:
        return False
    return True


async def for_push(
    db: Database,
    storage: ObjectReader | None,
    repository: str,
    digest: str,
    parsed: ParsedManifest,
    *,
    known_new: bool = False,
) -> list[Label] | None:
    """The content labels of a manifest about to be pushed, or None when the repository
    stores it already (its labels are stored with it: no config read; `known_new` skips
    that check). Run before the push's transaction: storage I/O must not hold it."""
    config = parsed.config
    async with db.read() as session:
        state = await session.one(
            PUSH_STATE,
            repository=repository,
            digest=digest,
            config="" if config is None else str(config.digest),
        )
    stored, linked_size = state if state is not None else (None, None)
    if stored is not None and not known_new:
        return None
    data = None
    # Linked with another size (or not at all): the push fails on its blob check anyway.
    if (
        storage is not None
        and config is not None
        and config.size <= MAX_CONFIG_BYTES
        and linked_size == config.size
    ):
        data = await read_config(storage, config)
    return content_labels(parsed, data)


async def read_config(storage: ObjectReader, config: Descriptor) -> bytes | None:
    """At most MAX_CONFIG_BYTES of the config blob, whose link and size the caller
    checked; None if it is larger, differs from its size, or cannot be read."""
    chunks: list[bytes] = []
    try:
        # Read to the end of the bounded range, so the driver closes what it opened.
        async for chunk in storage.read(layout.blob_key(config.digest), 0, MAX_CONFIG_BYTES + 1):
            chunks.append(chunk)
    except (StorageError, OSError):
        return None
    data = b"".join(chunks)
    return data if len(data) == config.size <= MAX_CONFIG_BYTES else None


def _config_labels(config: bytes | None) -> dict[str, Any]:
    if not config:
        return {}
    try:
        doc = json.loads(config)
    except (ValueError, RecursionError):
        return {}  # not JSON: an artifact's config, say
    inner = doc.get("config") if isinstance(doc, dict) else None
    labels = inner.get("Labels") if isinstance(inner, dict) else None
    return labels if isinstance(labels, dict) else {}


def content_labels(parsed: ParsedManifest, config: bytes | None) -> list[Label]:
    """Labels of the content: the config's first, then the manifest's annotations;
    a pair found in both is kept once."""
    out: list[Label] = []
    seen: set[Label] = set()
    candidates = [*_config_labels(config).items(), *(parsed.annotations or {}).items()]
    for key, value in candidates:
        if len(out) >= MAX_CONTENT_LABELS:
            break
        if not isinstance(key, str) or not isinstance(value, str) or not usable(key, value):
            continue
        if (key, value) not in seen:
            seen.add((key, value))
            out.append((key, value))
    return out


def expires_after(labels: list[Label]) -> timedelta | None:
    """The duration of the first `quay.expires-after` label that parses (and is within
    ten years), or None."""
    for key, value in labels:
        if key == EXPIRES_AFTER:
            try:
                return parse_duration(value)
            except DurationError:
                continue
    return None


async def stored_expires_after(session: DbSession, manifest_id: int) -> timedelta | None:
    """`expires_after` of the content labels stored with a manifest (a push of it again)."""
    rows = await session.all(STORED_EXPIRES_AFTER, id=manifest_id, key=EXPIRES_AFTER)
    return expires_after([(str(k), str(v)) for k, v in rows])


async def record(
    session: DbSession, manifest_id: int, labels: list[Label], source: str = "manifest"
) -> None:
    if not labels:
        return
    now = utcnow()
    rows = [
        {"manifest_id": manifest_id, "key": k, "value": v, "source": source, "now": now}
        for k, v in labels
    ]
    await session.run_many(INSERT, rows)
