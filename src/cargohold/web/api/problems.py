"""The services' Problem classes as API errors: one table, used by the API modules as
`with answering(): ...` around a service call."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from cargohold.services.problems import Conflict, Forbidden, Invalid, NotFound, Problem
from cargohold.web.api.errors import ApiError, bad_request, conflict, forbidden, not_found


def api_error(problem: Problem) -> ApiError:
    message = str(problem)
    if isinstance(problem, NotFound):
        return not_found(message)
    if isinstance(problem, Forbidden):
        return forbidden(message)
    if isinstance(problem, Conflict):
        return conflict(message)
    if isinstance(problem, Invalid):
        return bad_request(message)
    return bad_request(message)


@contextmanager
def answering() -> Iterator[None]:
    """Turn a service's Problem into the matching API error."""
    try:
        yield
    except Problem as exc:
        raise api_error(exc) from exc
