"""Why an administrative change (robots, repositories, permission grants) cannot be made.

The services raise these; the API maps each class to one status once
(web/api/problems.py), so a service never speaks HTTP."""

from __future__ import annotations


class Problem(Exception):
    """The change cannot be made as asked; the message says why (safe to show)."""


class NotFound(Problem):
    """The object named does not exist, or the caller may not know that it does."""


class Invalid(Problem):
    """The request names something that cannot be used here (bad name, wrong tenant)."""


class Conflict(Problem):
    """The object's state forbids the change (already exists, still has content)."""


class Forbidden(Problem):
    """The caller is known to the object but lacks the right for this change."""
