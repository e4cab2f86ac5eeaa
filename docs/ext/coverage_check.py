"""Fails the docs build when a name in a public `__all__` has no entry in the API reference.

The idea of optax's docs/ext/coverage_check.py, as an extension that runs inside every build
rather than a builder of its own. Every public module of reinforce_jax (pkgutil's walk, skipping
modules and packages whose name starts with `_`) exports names in `__all__`; each
`module.name` must be documented, either under that very name or as the same object under
another public path (`reinforce_jax.rl.make_train_step` is covered by the entry for
`reinforce_jax.rl.train.make_train_step`).

Importing this module needs no Sphinx: tests/test_docs.py runs the same check on the entries
listed in docs/api/*.rst, so `make test` catches a missing entry without building the docs.
"""

from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import re
from collections.abc import Iterable, Iterator

PACKAGE = "reinforce_jax"


def public_modules(package: str = PACKAGE) -> Iterator[str]:
  """The package and every module below it none of whose path components start with `_`."""
  yield package
  root = importlib.import_module(package)
  for info in pkgutil.walk_packages(root.__path__, prefix=f"{package}."):
    if any(part.startswith("_") for part in info.name.split(".")):
      continue
    yield info.name


def public_names(package: str = PACKAGE) -> list[str]:
  """`module.name` for every name in the `__all__` of every public module."""
  names = []
  for module_name in public_modules(package):
    module = importlib.import_module(module_name)
    names.extend(f"{module_name}.{name}" for name in getattr(module, "__all__", ()))
  return sorted(set(names))


def resolve(qualified: str) -> object:
  """The object a dotted name refers to: the longest importable module, then attributes."""
  parts = qualified.split(".")
  for stop in range(len(parts), 0, -1):
    try:
      value = importlib.import_module(".".join(parts[:stop]))
    except ImportError:
      continue
    for attribute in parts[stop:]:
      value = getattr(value, attribute)
    return value
  raise ImportError(f"cannot import {qualified!r}")


def _has_identity(value: object) -> bool:
  # Functions, classes and modules are one object wherever they are exported from; a number
  # or a string may be the same object by accident, so those must also share the name.
  return inspect.ismodule(value) or inspect.isclass(value) or callable(value)


def missing(documented: Iterable[str], package: str = PACKAGE) -> list[str]:
  """The public names that no documented name covers (see the module docstring)."""
  documented = set(documented)
  by_identity, by_name = set(), set()
  for name in documented:
    try:
      value = resolve(name)
    except (ImportError, AttributeError):
      continue
    by_identity.add(id(value))
    by_name.add((id(value), name.rpartition(".")[2]))
  absent = []
  for name in public_names(package):
    if name in documented:
      continue
    try:
      value = resolve(name)
    except (ImportError, AttributeError):
      absent.append(name)  # in __all__ but not an attribute: a bug to report as well
      continue
    if (id(value), name.rpartition(".")[2]) in by_name:
      continue
    if _has_identity(value) and id(value) in by_identity:
      continue
    absent.append(name)
  return absent


_DIRECTIVE = re.compile(r"^(\s*)\.\. (?:py:)?(\w+)::\s*(\S*)\s*$")


def listed_names(api_dir: pathlib.Path | str) -> set[str]:
  """The names docs/api/*.rst document, read without Sphinx.

  Understands `.. currentmodule::`, `.. module::`, `.. automodule::`, `.. auto<kind>:: name` and
  the entries of `.. autosummary::` blocks (a leading `~` only shortens the displayed name).
  """
  names = set()
  for page in sorted(pathlib.Path(api_dir).glob("*.rst")):
    current = None
    in_summary, summary_indent = False, 0
    for line in page.read_text().splitlines():
      match = _DIRECTIVE.match(line)
      if match:
        indent, directive, argument = match.groups()
        in_summary = directive == "autosummary"
        summary_indent = len(indent)
        if directive in ("currentmodule", "module", "automodule"):
          current = None if argument == "None" else argument
          if directive != "currentmodule":
            names.add(argument)
        elif directive.startswith("auto") and directive != "autosummary" and argument:
          names.add(_qualify(argument, current))
        continue
      if not in_summary or not line.strip():
        continue
      indent = len(line) - len(line.lstrip())
      entry = line.strip()
      if indent <= summary_indent:
        in_summary = False
      elif not entry.startswith(":"):
        names.add(_qualify(entry.lstrip("~"), current))
  return names


def _qualify(entry: str, current: str | None) -> str:
  if current is None or entry == PACKAGE or entry.startswith(f"{PACKAGE}."):
    return entry
  return f"{current}.{entry}"


def _check(app, env) -> None:
  from sphinx.util import logging

  logger = logging.getLogger(__name__)
  absent = missing(env.get_domain("py").objects)
  for name in absent:
    logger.warning("%s is in a public __all__ but has no entry in docs/api/*.rst", name,
                   type="coverage_check", subtype="missing")
  app.env.coverage_check_missing = absent


def _fail(app, exception) -> None:
  # A warning fails `make docs` (-W); a build without -W fails here all the same.
  if exception is None and getattr(app.env, "coverage_check_missing", None):
    app.statuscode = 1


def setup(app):
  app.connect("env-check-consistency", _check)
  app.connect("build-finished", _fail)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
