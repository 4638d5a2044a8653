"""Audit logs: per repository, organization, user and (for superusers) the whole
registry, after Quay's `/logs` endpoints; `/exportlogs` streams the same entries as JSON
lines.

Where this differs from Quay (docs/api.md): pages are keyset pages (`next_page` is an
opaque token, `limit` up to 1000), there is no default time window (Quay shows the last
week), times are ISO 8601 in UTC, `kinds` filters on the server, and export is a
synchronous download instead of a job that mails a link."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse

from cargohold.auth.roles import Role
from cargohold.services.audit import KINDS, LogFilter, LogRecord, LogScope
from cargohold.web.api.deps import (
    Caller,
    OrgAccess,
    RepoAccess,
    SignedIn,
    Superuser,
    repository_name,
)
from cargohold.web.api.errors import bad_request

router = APIRouter(tags=["logs"])

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
EXPORT_BATCH = 500
NDJSON = "application/x-ndjson"
QUAY_DATE = re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})")
ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")

StartTime = Annotated[
    str | None,
    Query(
        description="ISO 8601 (a date or a date and time; UTC unless an offset is given) "
        "or MM/DD/YYYY; inclusive."
    ),
]
EndTime = Annotated[
    str | None,
    Query(description="Like starttime; exclusive for a time, inclusive for a whole date."),
]
Kinds = Annotated[str | None, Query(description="Comma-separated entry kinds.")]
NextPage = Annotated[str | None, Query(description="The next_page of the previous answer.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Entries per page.")]


# -- parameters ----------------------------------------------------------------------------


def parse_time(text: str, *, end: bool) -> datetime:
    """A time parameter. A date alone means its whole day: from its start for
    `starttime`, up to the next day's start for `endtime`."""
    text = text.strip()
    day: date | None = None
    try:
        if m := QUAY_DATE.fullmatch(text):
            day = date(int(m[3]), int(m[1]), int(m[2]))
        elif ISO_DATE.fullmatch(text):
            day = date.fromisoformat(text)
        else:
            moment = datetime.fromisoformat(text)
            return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    except ValueError as exc:
        raise bad_request(f"invalid time {text!r}: use ISO 8601 or MM/DD/YYYY") from exc
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start + timedelta(days=1) if end else start


def parse_kinds(text: str | None) -> frozenset[str]:
    if not text:
        return frozenset()
    kinds = frozenset(k.strip() for k in text.split(",") if k.strip())
    unknown = sorted(kinds - KINDS)
    if unknown:
        raise bad_request(f"unknown kinds: {', '.join(unknown)}")
    return kinds


def log_filter(starttime: str | None, endtime: str | None, kinds: str | None) -> LogFilter:
    start = parse_time(starttime, end=False) if starttime else None
    end = parse_time(endtime, end=True) if endtime else None
    if start is not None and end is not None and start >= end:
        raise bad_request("starttime must be before endtime")
    return LogFilter(start, end, parse_kinds(kinds))


def encode_page(last_id: int) -> str:
    raw = json.dumps({"before": last_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode_page(token: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        value = json.loads(raw)["before"]
    except (binascii.Error, ValueError, TypeError, KeyError) as exc:
        raise bad_request("invalid next_page") from exc
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise bad_request("invalid next_page")
    return value


# -- answers -------------------------------------------------------------------------------


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def entry_json(record: LogRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "kind": record.kind,
        "datetime": iso(record.created_at),
        "performer": {"kind": record.actor_kind, "name": record.actor},
        "ip": record.ip,
        "user_agent": record.user_agent,
        "namespace": record.namespace,
        "repository": record.repository,
        "metadata": record.details,
    }


async def page(
    caller: Caller,
    scope: LogScope,
    starttime: str | None,
    endtime: str | None,
    kinds: str | None,
    next_page: str | None,
    limit: int,
) -> dict[str, Any]:
    where = log_filter(starttime, endtime, kinds)
    before = decode_page(next_page) if next_page else None
    records = await caller.runtime.audit.search(scope, where, before=before, limit=limit + 1)
    more = len(records) > limit
    records = records[:limit]
    return {
        "start_time": iso(where.start) if where.start else None,
        "end_time": iso(where.end) if where.end else None,
        "logs": [entry_json(r) for r in records],
        "next_page": encode_page(records[-1].id) if more else None,
    }


def export(
    caller: Caller,
    scope: LogScope,
    starttime: str | None,
    endtime: str | None,
    kinds: str | None,
) -> StreamingResponse:
    where = log_filter(starttime, endtime, kinds)  # bad parameters: a 400 before streaming
    audit = caller.runtime.audit

    async def lines() -> AsyncIterator[bytes]:
        before: int | None = None
        while True:
            batch = await audit.search(scope, where, before=before, limit=EXPORT_BATCH)
            if batch:
                text = "".join(
                    json.dumps(entry_json(r), separators=(",", ":")) + "\n" for r in batch
                )
                yield text.encode()
            if len(batch) < EXPORT_BATCH:
                return
            before = batch[-1].id

    headers = {"Content-Disposition": 'attachment; filename="audit-log.jsonl"'}
    return StreamingResponse(lines(), media_type=NDJSON, headers=headers)


# -- routes --------------------------------------------------------------------------------
# The repository paths end in a fixed word after {repository:path}: app.py includes this
# module before the modules whose routes are /repository/{repository:path} alone.


def user_scope(caller: Caller) -> LogScope:
    assert caller.principal.name is not None  # SignedIn admits users only
    return LogScope(user=caller.principal.name)


RepoAdmin = Annotated[Caller, Depends(RepoAccess(Role.ADMIN))]
OrgAdmin = Annotated[Caller, Depends(OrgAccess("orgname", admin=True))]
User = Annotated[Caller, Depends(SignedIn("user:read"))]
Super = Annotated[Caller, Depends(Superuser())]


@router.get("/repository/{repository:path}/exportlogs", response_class=StreamingResponse)
async def export_repository_logs(
    repository: str,
    caller: RepoAdmin,
    starttime: StartTime = None,
    endtime: EndTime = None,
    kinds: Kinds = None,
) -> StreamingResponse:
    """The repository's entries as JSON lines (repository administrators)."""
    scope = LogScope(repository=repository_name(caller.request).value)
    return export(caller, scope, starttime, endtime, kinds)


@router.get("/repository/{repository:path}/logs")
async def repository_logs(
    repository: str,
    caller: RepoAdmin,
    starttime: StartTime = None,
    endtime: EndTime = None,
    kinds: Kinds = None,
    next_page: NextPage = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """The repository's entries, newest first (repository administrators)."""
    scope = LogScope(repository=repository_name(caller.request).value)
    return await page(caller, scope, starttime, endtime, kinds, next_page, limit)


@router.get("/organization/{orgname}/exportlogs", response_class=StreamingResponse)
async def export_organization_logs(
    orgname: str,
    caller: OrgAdmin,
    starttime: StartTime = None,
    endtime: EndTime = None,
    kinds: Kinds = None,
) -> StreamingResponse:
    """Every entry in the organization's namespace as JSON lines (its administrators)."""
    return export(caller, LogScope(namespace=orgname), starttime, endtime, kinds)


@router.get("/organization/{orgname}/logs")
async def organization_logs(
    orgname: str,
    caller: OrgAdmin,
    starttime: StartTime = None,
    endtime: EndTime = None,
    kinds: Kinds = None,
    next_page: NextPage = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Every entry in the organization's namespace, newest first (its administrators)."""
    scope = LogScope(namespace=orgname)
    return await page(caller, scope, starttime, endtime, kinds, next_page, limit)


@router.get("/user/exportlogs", response_class=StreamingResponse)
async def export_user_logs(
    caller: User,
    starttime: StartTime = None,
    endtime: EndTime = None,
    kinds: Kinds = None,
) -> StreamingResponse:
    """The signed-in user's entries as JSON lines."""
    scope = user_scope(caller)
    return export(caller, scope, starttime, endtime, kinds)


@router.get("/user/logs")
async def user_logs(
    caller: User,
    starttime: StartTime = None,
    endtime: EndTime = None,
    kinds: Kinds = None,
    next_page: NextPage = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """What the signed-in user did, and everything in their own namespace, newest first."""
    scope = user_scope(caller)
    return await page(caller, scope, starttime, endtime, kinds, next_page, limit)


@router.get("/superuser/exportlogs", response_class=StreamingResponse)
async def export_all_logs(
    caller: Super,
    starttime: StartTime = None,
    endtime: EndTime = None,
    kinds: Kinds = None,
) -> StreamingResponse:
    """Every entry of the registry as JSON lines (superusers)."""
    return export(caller, LogScope(), starttime, endtime, kinds)


@router.get("/superuser/logs")
async def all_logs(
    caller: Super,
    starttime: StartTime = None,
    endtime: EndTime = None,
    kinds: Kinds = None,
    next_page: NextPage = None,
    limit: Limit = DEFAULT_LIMIT,
) -> dict[str, Any]:
    """Every entry of the registry, newest first (superusers)."""
    return await page(caller, LogScope(), starttime, endtime, kinds, next_page, limit)
