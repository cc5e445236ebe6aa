"""Finding the flow a command line names.

``path/to/file.py:flow_name`` imports the file as Python would run it (its directory on
``sys.path`` ahead of all but the standard library, so its sibling modules import), under
a name a worker process can import it by too (see :func:`_module_name`);
``package.module:flow_name`` imports the module with the current directory on
``sys.path``, as ``python -m`` does.
The ``:flow_name`` may be left out when the module defines exactly one flow. Each
mistake (no such file or module, no such flow, not a flow, a module that fails to
import) is a :class:`BadInput` naming it.

Shell completion of a target reads the file's source (``ast``) for its flows: completing
never runs the user's code.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

import click
from click.shell_completion import CompletionItem

from ..flows import Flow
from ..runners._worker import FILE_MODULE_PREFIX
from ..tasks import Task
from ._errors import BadInput

__all__ = ["complete_target", "load_flow"]

_CLI_DIR = os.path.join(os.path.dirname(__file__), "")


def load_flow(target: str) -> tuple[Flow[Any, Any], str]:
    """The flow ``target`` names, and where it was found (for messages)."""
    where, name = _split(target)
    module = _import_file(where) if _is_file(where) else _import_module(where)
    return _find_flow(module, where, name), where


def _split(target: str) -> tuple[str, str | None]:
    """``(module or file, flow name or None)``."""
    where, sep, name = target.rpartition(":")
    if not sep:
        return target, None
    if where and name.isidentifier():
        return where, name
    if "/" in name or "\\" in name or name.endswith(".py"):
        return target, None  # a colon in the path (C:/flows/etl.py), no flow named
    if where and name:  # a name that is not a Python name: the flow's name=, often
        raise BadInput(
            f"{target!r} is not a flow target: {name!r} is not a Python name; give the "
            "name of the flow's function (the one after `def`, not its name= nor a run's "
            "name): path/to/file.py:function_name or package.module:function_name"
        )
    raise BadInput(
        f"{target!r} is not a flow target: give path/to/file.py:flow_name or "
        "package.module:flow_name"
    )


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or os.sep in where or _is_a_file(Path(where))


def _is_a_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # a name too long for the file system, say: no such file either
        return False


def _import_file(where: str) -> ModuleType:
    path = Path(where)
    if not _is_a_file(path):
        raise BadInput(f"no such file: {where}")
    path = path.resolve()
    directory = str(path.parent)
    if directory not in sys.path:
        sys.path.insert(_after_the_standard_library(), directory)
    name = _module_name(path)
    if _is_module_of(sys.modules.get(name), path):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"{where} cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs, as an import does: pickling its functions by reference
    # and dataclasses defined in it need the module in sys.modules.
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException as exc:
        sys.modules.pop(name, None)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise  # Ctrl-C, or the file exits: as Python itself would
        # Any other (an application's own BaseException, a CancelledError): the file
        # failed to import, shown with its frames only.
        raise BadInput(_import_failure(where, exc) + _as_a_module(path, exc)) from None
    return module


def _as_a_module(path: Path, exc: BaseException) -> str:
    """For a file of a package that imports relatively (which only works when it is
    imported as part of its package): how to name it as a module instead."""
    if not (isinstance(exc, ImportError) and "relative import" in str(exc)):
        return ""
    parts = [path.stem]
    directory = path.parent
    while (directory / "__init__.py").is_file():
        parts.insert(0, directory.name)
        directory = directory.parent
    if len(parts) == 1:
        return (
            f"\n{path.name} imports relatively but its directory is not a package (no "
            "__init__.py): import its neighbours absolutely"
        )
    return (
        f"\n{path.name} is part of package {parts[0]!r} and imports relatively: run it as "
        f"a module, from {str(directory)!r}: orchestr run {'.'.join(parts)}:<flow function>"
    )


def _after_the_standard_library() -> int:
    """Where a flow file's directory goes on ``sys.path``: ahead of everything but the
    standard library, so that its sibling modules import, and a ``json.py`` or
    ``random.py`` next to it does not shadow the standard library's module (in this
    process, and in the worker processes that start with this ``sys.path``: that is what
    breaks ``python json.py``)."""
    stdlib = os.path.dirname(os.path.realpath(os.__file__))
    last = -1
    for index, entry in enumerate(sys.path):
        real = os.path.realpath(entry or ".")
        if real == stdlib or real.startswith(stdlib + os.sep):
            last = index
        elif real.endswith(".zip") and os.path.dirname(real) == os.path.dirname(stdlib):
            last = index  # python311.zip
    return last + 1


def _module_name(path: Path) -> str:
    """The name to load the file ``path`` under: its stem (``etl``, ``my-etl``: any name
    an import looks up as a file) when importing that name finds this very file, in this
    process and in a worker process; else a name of its own, which the process pool's
    workers are told about (a ``json.py`` is not ``json``)."""
    stem = path.stem
    if "." not in stem and stem not in sys.stdlib_module_names:
        loaded = sys.modules.get(stem)
        if loaded is not None:
            if _is_module_of(loaded, path):
                return stem
        else:
            spec = importlib.machinery.PathFinder.find_spec(stem)
            if spec is not None and spec.origin and _same_file(spec.origin, path):
                return stem
    base = FILE_MODULE_PREFIX + re.sub(r"\W", "_", stem)
    name, n = f"{base}__", 1
    while name in sys.modules and not _is_module_of(sys.modules[name], path):
        n += 1
        name = f"{base}_{n}__"
    return name


def _is_module_of(module: ModuleType | None, path: Path) -> bool:
    found = getattr(module, "__file__", None)
    return found is not None and _same_file(found, path)


def _same_file(found: str, path: Path) -> bool:
    try:
        return Path(found).resolve() == path
    except OSError:
        return False


def _import_module(where: str) -> ModuleType:
    if not all(part.isidentifier() for part in where.split(".")):
        raise BadInput(
            f"{where!r} is neither a .py file nor a module name: give path/to/file.py:flow_name "
            "or package.module:flow_name"
        )
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (where == exc.name or where.startswith(exc.name + ".")):
            raise BadInput(
                f"no module named {where!r} (searched the current directory too)"
            ) from None
        raise BadInput(_import_failure(where, exc)) from None
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:
        raise BadInput(_import_failure(where, exc)) from None


def _import_failure(where: str, exc: BaseException) -> str:
    """The error with the traceback of the user's frames (not importlib's or ours)."""
    summary = traceback.TracebackException.from_exception(exc, compact=True)
    summary.stack = traceback.StackSummary.from_list(
        [frame for frame in summary.stack if not _machinery(frame.filename)]
    )
    shown = "".join(summary.format()).rstrip()
    return f"{where} failed to import:\n{shown}"


def _machinery(filename: str) -> bool:
    return (
        filename.startswith(_CLI_DIR)
        or filename.startswith("<frozen importlib")
        or filename.startswith(_IMPORTLIB_DIR)  # (import_module's own frame)
    )


_IMPORTLIB_DIR = os.path.join(os.path.dirname(importlib.__file__), "")


def _find_flow(module: ModuleType, where: str, name: str | None) -> Flow[Any, Any]:
    flows = _flows_in(module)
    if name is None:
        if len(flows) == 1:
            return next(iter(flows.values()))
        if not flows:
            raise BadInput(f"{where} defines no flow (decorate a function with @flow)")
        raise BadInput(
            f"{where} defines several flows; name one as {where}:NAME (its flows: "
            f"{', '.join(flows)})"
        )
    found = getattr(module, name, None)
    if found is None:
        listed = f"its flows: {', '.join(flows)}" if flows else "it defines no flow"
        raise BadInput(f"{where} has no flow named {name!r} ({listed})")
    if not isinstance(found, Flow):
        kind = "task" if isinstance(found, Task) else type(found).__name__
        raise BadInput(f"{name!r} in {where} is a {kind}, not a flow: only an @flow can be run")
    return found


def _flows_in(module: ModuleType) -> dict[str, Flow[Any, Any]]:
    """The module's flows by name: those defined in it, else those it imported."""
    every = {key: value for key, value in vars(module).items() if isinstance(value, Flow)}
    own = {
        key: value
        for key, value in every.items()
        if getattr(value.fn, "__module__", None) == module.__name__
    }
    return own or every


# -- shell completion ---------------------------------------------------------------------
def complete_target(
    ctx: click.Context, param: click.Parameter, incomplete: str
) -> list[CompletionItem]:
    """``file.py:`` completes to the file's flows (read from its source, not run); other
    words complete as paths."""
    where, sep, partial = incomplete.rpartition(":")
    if sep and where.endswith(".py") and _is_a_file(Path(where)):
        return [
            CompletionItem(f"{where}:{name}")
            for name in flow_names_in_source(Path(where))
            if name.startswith(partial)
        ]
    return [CompletionItem(incomplete, type="file")]


def flow_names_in_source(path: Path) -> list[str]:
    """Names of the functions in ``path`` decorated with ``@flow`` / ``@flow(...)``
    (also ``@orchestr.flow``), found without running the file."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return []
    names = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
            _is_flow_decorator(d) for d in node.decorator_list
        ):
            names.append(node.name)
    return names


def _is_flow_decorator(node: ast.expr) -> bool:
    if isinstance(node, ast.Call):
        node = node.func
    if isinstance(node, ast.Name):
        return node.id == "flow"
    return isinstance(node, ast.Attribute) and node.attr == "flow"
