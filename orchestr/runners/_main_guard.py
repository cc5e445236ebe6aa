"""Tasks a worker process cannot find: defined only under the main module's guard.

A worker imports the main module under another name (``__mp_main__``), so the block
under ``if __name__ == "__main__":`` does not run there, and a task defined only in it is
missing: a bare ``AttributeError`` far away on a process pool, nothing at all on
``PicklingTaskRunner`` (which runs the call in this process). The calls' pickler
(:mod:`._pickling`) asks here, once per task function, and refuses such a call before it
leaves, naming the task and its line. The main module's source is read once, with
:mod:`ast`: only names bound under the guard and nowhere else at module level count.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable

__all__ = ["Guarded", "refuse_guarded"]


class Guarded(Exception):
    """A task of the main module defined only under its ``__main__`` guard."""


#: The main module's file -> the names it binds only under its ``__main__`` guard, and
#: their lines (read once per file).
_guarded: dict[str, dict[str, int]] = {}


def refuse_guarded(qualname: str) -> None:
    """Raise Guarded if the main module defines ``qualname`` only under ``if __name__ ==
    "__main__":``. A worker process imports the main module under another name, so that
    block does not run there: the task would be missing (a bare AttributeError far away,
    on a process pool; nothing at all in this process, on PicklingTaskRunner)."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    name = qualname.split(".", 1)[0]
    if not isinstance(path, str):  # python -c, a notebook: nothing a worker could import
        return
    names = _guarded.get(path)
    if names is None:
        names = _guarded[path] = _names_under_main_guard(path)
    line = names.get(name)
    if line is not None:
        raise Guarded(
            f'its task {name!r} is defined under `if __name__ == "__main__":` (line '
            f"{line} of {path}), which does not run in worker processes (they import that "
            "module under another name), so they cannot find it; define tasks at module "
            "level, above the guard"
        )


def _names_under_main_guard(path: str) -> dict[str, int]:
    """The names the module at ``path`` binds under its ``__main__`` guard and nowhere
    else at module level, with their lines; {} if it cannot be read."""
    try:
        with open(path, "rb") as file:
            tree = ast.parse(file.read())
    except (OSError, SyntaxError, ValueError):
        return {}
    outside: set[str] = set()
    inside: dict[str, int] = {}
    for node in tree.body:
        if _is_main_guard(node):
            for statement in node.body:  # type: ignore[attr-defined]
                for bound, line in _bindings(statement):
                    inside.setdefault(bound, line)
            for statement in node.orelse:  # type: ignore[attr-defined]
                outside.update(bound for bound, _ in _bindings(statement))
        else:
            outside.update(bound for bound, _ in _bindings(node))
    return {bound: line for bound, line in inside.items() if bound not in outside}


def _is_main_guard(node: ast.stmt) -> bool:
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    sides = [test.left, *test.comparators]
    return (
        len(sides) == 2
        and isinstance(test.ops[0], ast.Eq)
        and any(isinstance(side, ast.Name) and side.id == "__name__" for side in sides)
        and any(isinstance(side, ast.Constant) and side.value == "__main__" for side in sides)
    )


def _bindings(node: ast.stmt) -> Iterable[tuple[str, int]]:
    """The module-level names a statement binds (not inside functions or classes)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name, node.lineno
        return
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        for alias in node.names:
            yield (alias.asname or alias.name.split(".")[0]), node.lineno
        return
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor)):
        targets = [node.target]
    for target in targets:
        for part in ast.walk(target):
            if isinstance(part, ast.Name):
                yield part.id, node.lineno
    for field in ("body", "orelse", "finalbody", "handlers"):
        for child in getattr(node, field, ()):
            if isinstance(child, ast.ExceptHandler):
                yield from (b for s in child.body for b in _bindings(s))
            elif isinstance(child, ast.stmt):
                yield from _bindings(child)
    if isinstance(node, (ast.With, ast.AsyncWith)):
        for item in node.items:
            if item.optional_vars is not None:
                for part in ast.walk(item.optional_vars):
                    if isinstance(part, ast.Name):
                        yield part.id, node.lineno
