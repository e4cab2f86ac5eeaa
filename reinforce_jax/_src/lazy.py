"""Re-exports resolved on first use (PEP 562), so that importing a package stays cheap."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def lazy_exports(package: str, origins: Mapping[str, str]
                 ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
  """The module-level `__getattr__` and `__dir__` of `package`.

  Args:
    package: the package's `__name__`.
    origins: each exported name to `"module"` (the name is that module) or
      `"module:attribute"`.
  """

  def __getattr__(name: str):
    if name not in origins:
      raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module_name, _, attribute = origins[name].partition(":")
    value = importlib.import_module(module_name)
    if attribute:
      value = getattr(value, attribute)
    setattr(sys.modules[package], name, value)  # later look-ups skip __getattr__
    return value

  def __dir__() -> list[str]:
    return sorted({*vars(sys.modules[package]), *origins})

  return __getattr__, __dir__
