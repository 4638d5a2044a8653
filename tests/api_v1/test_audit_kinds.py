"""Every kind of audit entry is asserted by some test after its action.

The kinds asserted are read from the tests' source: every
`assert_logged(server, "<kind>", ...)` call (tests/support/audit.py) in a test module
under tests/, the kind a string literal or the variable of a loop over literals
(`for kind in ("create_x", "delete_x"): assert_logged(server, kind, ...)`).

Reading the source, as tests/api/test_errors.py does for error codes, makes the check
independent of which tests run and in what order; whether each entry is really written
is what the calls themselves assert when their tests run."""

from __future__ import annotations

import ast
from pathlib import Path

from cargohold.services.audit import KINDS

TESTS = Path(__file__).resolve().parents[1]


def _kind_node(call: ast.Call) -> ast.expr | None:
    kind = call.args[1] if len(call.args) > 1 else None
    for keyword in call.keywords:
        if keyword.arg == "kind":
            kind = keyword.value
    return kind


def _is_assert_logged(node: ast.AST) -> bool:
    if not isinstance(node, ast.Call):
        return False
    func = node.func
    name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", None)
    return name == "assert_logged"


def _literals(node: ast.expr) -> list[str] | None:
    if isinstance(node, ast.Tuple | ast.List) and all(
        isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts
    ):
        return [e.value for e in node.elts if isinstance(e, ast.Constant)]
    return None


def asserted_kinds() -> tuple[dict[str, list[str]], list[str]]:
    """(kind -> where it is asserted, calls whose kind cannot be read) in tests/."""
    found: dict[str, list[str]] = {}
    unreadable: list[str] = []
    for path in sorted(TESTS.rglob("test_*.py")):
        kinds, unread = kinds_in(
            path.read_text(encoding="utf-8"), str(path.relative_to(TESTS.parent))
        )
        for kind, where in kinds.items():
            found.setdefault(kind, []).extend(where)
        unreadable += unread
    return found, unreadable


def kinds_in(source: str, label: str) -> tuple[dict[str, list[str]], list[str]]:
    """The kinds of the assert_logged calls in `source`. A kind is a string literal, or
    the variable of an enclosing `for kind in ("a", "b", ...)` loop."""
    found: dict[str, list[str]] = {}
    unreadable: list[str] = []
    tree = ast.parse(source, filename=label)
    loop_kinds: dict[int, list[str]] = {}  # id(call) -> the kinds its loop goes through
    for loop in ast.walk(tree):
        if not isinstance(loop, ast.For) or not isinstance(loop.target, ast.Name):
            continue
        values = _literals(loop.iter)
        if values is None:
            continue
        for node in ast.walk(loop):
            if _is_assert_logged(node):
                assert isinstance(node, ast.Call)
                kind = _kind_node(node)
                if isinstance(kind, ast.Name) and kind.id == loop.target.id:
                    loop_kinds[id(node)] = values
    for node in ast.walk(tree):
        if not _is_assert_logged(node):
            continue
        assert isinstance(node, ast.Call)
        where = f"{label}:{node.lineno}"
        kind = _kind_node(node)
        if isinstance(kind, ast.Constant) and isinstance(kind.value, str):
            found.setdefault(kind.value, []).append(where)
        elif id(node) in loop_kinds:
            for value in loop_kinds[id(node)]:
                found.setdefault(value, []).append(where)
        else:
            unreadable.append(where)
    return found, unreadable


def test_every_kind_is_asserted() -> None:
    found, _ = asserted_kinds()
    missing = sorted(KINDS - set(found))
    assert not missing, (
        "these audit kinds have no test asserting them with "
        f"tests.support.audit.assert_logged(server, '<kind>', ...): {', '.join(missing)}"
    )


def test_asserted_kinds_exist_and_are_literal() -> None:
    found, unreadable = asserted_kinds()
    assert not unreadable, (
        f"pass the kind to assert_logged as a string literal (or loop over literals): {unreadable}"
    )
    unknown = {kind: where for kind, where in found.items() if kind not in KINDS}
    assert not unknown, f"kinds not in services.audit.KINDS: {unknown}"


def test_the_check_reads_literals_and_loops() -> None:
    source = """
def test_x(server):
    assert_logged(server, "push", actor="a")
    audit.assert_logged(server, kind="pull")
    for kind in ("create_team", "delete_team"):
        assert_logged(server, kind)
    for name in names:
        assert_logged(server, name)
"""
    found, unreadable = kinds_in(source, "sample")
    assert found == {
        "push": ["sample:3"],
        "pull": ["sample:4"],
        "create_team": ["sample:6"],
        "delete_team": ["sample:6"],
    }
    assert unreadable == ["sample:8"]
