"""Read away the unread body of a refused request before answering it.

Many refusals come before the handler reads the body: a 401 for an expired token on a
PATCH of a layer, a 404 for an unknown upload, a 413 for a manifest declared too large.
Answered as they are, the server closes the connection with the body still arriving, and
a reverse proxy that streams request bodies (nginx with `proxy_request_buffering off`, as
in front of any registry) fails writing the rest: its client gets a 502 instead of the
answer, and nginx counts the replica as failed (`max_fails`), taking a healthy replica out
of rotation. So the router first reads and discards what is left, up to `DRAIN_LIMIT`
bytes; past that (or when the declared length is larger) it answers at once, as before.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.types import Message, Receive

# Enough for any manifest (registry.max_manifest_bytes is at most 64 MiB) and for the
# usual PATCH chunks; a refused request bigger than this is cut off as before.
DRAIN_LIMIT = 64 * 1024 * 1024


class TrackedReceive:
    """`receive` that remembers whether the request body has been read to its end."""

    __slots__ = ("_receive", "finished")

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.finished = False

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.finished = True
        return message


def has_body(request: Request) -> bool:
    headers = request.headers
    if "transfer-encoding" in headers:
        return True
    length = headers.get("content-length", "")
    return length.isdigit() and int(length) > 0


async def drain(request: Request, receive: TrackedReceive, limit: int = DRAIN_LIMIT) -> None:
    """Discard the rest of the body, unless it is (declared) longer than `limit`."""
    if receive.finished or not has_body(request):
        return
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        return
    seen = 0
    while not receive.finished and seen <= limit:
        message = await receive()
        seen += len(message.get("body", b""))
