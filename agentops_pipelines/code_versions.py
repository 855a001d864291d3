"""Code versions that follow the code: a short hash of the source an asset runs.

An asset's code version (Dagster shows a materialization made by other code as stale) is the
SHA-256, 12 hex digits, of its module's source and of every module of the project that module
imports, transitively, imports inside functions included (that is where this code base imports
its heavy libraries). Change the evaluation's statistics and ``evaluation_report`` gets a new
version; change the serving process and it keeps its own.

The imports are found by reading the files, not by importing them (an import of mlflow would cost
seconds at every load): a regular expression over ``import`` and ``from ... import`` lines, and
``importlib.util.find_spec`` to find each module's file. A module is followed when its top-level
package is ``agentops_pipelines`` or the starting module's own (an agent defined elsewhere).
"""

import hashlib
import importlib.util
import os
import re
from functools import cache
from pathlib import Path

PROJECT = "agentops_pipelines"

_IMPORT = re.compile(
    r"^[ \t]*(?:from[ \t]+(?P<base>\.*[\w.]*)[ \t]+import[ \t]+(?P<names>\([^)]*\)|[^\n]*)"
    r"|import[ \t]+(?P<modules>[^\n]*))",
    re.MULTILINE)


def source_version(*modules: str) -> str:
    """The code version of an asset that runs ``modules`` (module names, e.g. ``__name__``)."""
    digest = hashlib.sha256()
    for name in sorted(source_modules(*modules)):
        found = _source_file(name)
        digest.update(name.encode() + b"\0")
        if found is not None:
            digest.update(_source(found[0])[0].encode())
    return digest.hexdigest()[:12]


def source_modules(*modules: str) -> set[str]:
    """``modules`` and every project module they import, transitively."""
    roots = {PROJECT, *(m.partition(".")[0] for m in modules)}
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = _source_file(name)
        if found is not None:
            path, package = found
            todo += [m for m in _imports(path, package) if m.partition(".")[0] in roots and m not in seen
                     and _source_file(m) is not None]
    return seen


def _source(path: str) -> tuple[str, str]:
    """(SHA-256, text) of a source file, read once, and again when it changes."""
    stat = os.stat(path)
    return _read(path, stat.st_mtime_ns, stat.st_size)


@cache
def _read(path: str, mtime_ns: int, size: int) -> tuple[str, str]:
    data = Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest(), data.decode("utf-8", errors="replace")


@cache
def _source_file(name: str) -> tuple[str, str] | None:
    """(file, package) of module ``name``, its package being itself when it is one; None when it is
    not a module with a source file (a name imported from a module, a builtin). Only a module
    whose parent is a package is looked up, so no module is ever imported to find out."""
    parent, _, _ = name.rpartition(".")
    if parent:
        found = _source_file(parent)
        if found is None or found[1] != parent:  # not a package: ``name`` is an attribute
            return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # e.g. __main__, or a package that fails to import
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return spec.origin, name if spec.submodule_search_locations is not None else parent


def _imports(path: str, package: str) -> frozenset[str]:
    return _imports_in(_source(path)[1], package)


@cache
def _imports_in(text: str, package: str) -> frozenset[str]:
    """Module names ``text`` imports, and for ``from x import y`` also ``x.y`` (y may be a
    submodule); relative imports resolved against ``package``."""
    found: set[str] = set()
    for match in _IMPORT.finditer(text):
        if match["modules"]:
            found |= {part.split()[0] for part in _strip_comment(match["modules"]).split(",") if part.strip()}
            continue
        base = match["base"]
        if base.startswith("."):
            try:
                base = importlib.util.resolve_name(base, package)
            except (ImportError, ValueError):
                continue
        found.add(base)
        names = _strip_comment(match["names"]).strip("()")
        found |= {f"{base}.{part.split()[0]}" for part in names.split(",") if part.strip() and part.strip() != "*"}
    return frozenset(found)


def _strip_comment(text: str) -> str:
    return re.sub(r"#[^\n]*", "", text).replace("\\\n", " ")
