"""The package's architecture, checked: imports go one way, in layers, and modules stay small."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "reinforce_jax"

# Each subpackage may import from its own layer's modules and from lower layers only.
LAYERS = {
    "_src": 0,
    "xla": 1,
    "core": 2,
    "estimators": 3,
    "envs": 3,
    "rl": 4,
    "sequence": 5,
    "experiments": 6,
    "cli": 7,
}
MAX_TOP_LEVEL_ENTRIES = 12
MAX_MODULE_LINES = 600


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str:
  """The package module that `name` (a module, or a name in one) refers to."""
  while name not in MODULES:
    name = name.rpartition(".")[0]
  return name


def _imports(module: str) -> set[str]:
  """Every package module that `module` imports, at the top or inside a function."""
  path = MODULES[module]
  tree = ast.parse(path.read_text())
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:  # relative import
        anchor = package.split(".")
        anchor = anchor[:len(anchor) - node.level + 1]
        base = ".".join([*anchor, *([base] if base else [])])
      names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
               for alias in node.names]
    else:
      continue
    found.update(_resolve(n) for n in names if n.split(".")[0] == "reinforce_jax")
  return found - {module}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> int | None:
  parts = module.split(".")
  return LAYERS[parts[1]] if len(parts) > 1 and parts[1] in LAYERS else None


def test_every_subpackage_has_a_layer():
  top = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
  assert top == set(LAYERS)


def test_no_module_imports_the_package_root():
  importers = sorted(m for m, targets in GRAPH.items() if "reinforce_jax" in targets)
  assert importers == ["reinforce_jax.__main__"] or importers == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _layer(m) is not None))
def test_imports_go_down_the_layers(module):
  upward = sorted(t for t in GRAPH[module]
                  if t != "reinforce_jax" and _layer(t) is not None and _layer(t) > _layer(module))
  assert not upward, f"{module} imports from a higher layer: {upward}"


def test_no_import_cycle():
  """Depth-first search over module -> imported module (a package's __init__ included)."""
  graph = GRAPH
  state: dict[str, int] = {}
  stack: list[str] = []

  def visit(node: str) -> None:
    state[node] = 1
    stack.append(node)
    for target in sorted(graph[node]):
      if state.get(target) == 1:
        cycle = stack[stack.index(target):] + [target]
        raise AssertionError("import cycle: " + " -> ".join(cycle))
      if target not in state:
        visit(target)
    stack.pop()
    state[node] = 2

  for module in sorted(graph):
    if module not in state:
      visit(module)


def test_few_entries_at_the_top():
  entries = [p.name for p in PACKAGE.iterdir()
             if p.name not in ("__init__.py", "__main__.py", "__pycache__", "py.typed")]
  assert len(entries) <= MAX_TOP_LEVEL_ENTRIES, sorted(entries)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module):
  lines = len(MODULES[module].read_text().splitlines())
  assert lines <= MAX_MODULE_LINES, f"{module} has {lines} lines"


def test_public_modules_declare_all():
  missing = [m for m, path in MODULES.items()
             if not any(part.startswith("_") for part in m.split("."))
             and path.name != "__main__.py" and "__all__" not in path.read_text()]
  assert not missing


def test_a_module_and_a_function_do_not_share_a_name():
  import reinforce_jax as rj

  for name in rj.__all__:
    value = getattr(rj, name)
    assert not (callable(value) and f"reinforce_jax.{name}" in MODULES), name


def test_importing_the_package_and_the_cli_does_not_import_jax():
  code = ("import sys, reinforce_jax, reinforce_jax.cli, reinforce_jax.rl.config, "
          "reinforce_jax.experiments.presets\n"
          "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'optax'))\n"
          "assert not heavy, heavy\n")
  subprocess.run([sys.executable, "-c", code], check=True)


def test_the_layering_check_can_fail(tmp_path, monkeypatch):
  """An upward import and a cycle, planted in a copy of the graph, are both caught."""
  monkeypatch.setitem(GRAPH, "reinforce_jax.core.losses",
                      GRAPH["reinforce_jax.core.losses"] | {"reinforce_jax.rl.train"})
  with pytest.raises(AssertionError, match="higher layer"):
    test_imports_go_down_the_layers("reinforce_jax.core.losses")
  monkeypatch.setitem(GRAPH, "reinforce_jax.xla.prng",
                      GRAPH["reinforce_jax.xla.prng"] | {"reinforce_jax.xla.compiler"})
  monkeypatch.setitem(GRAPH, "reinforce_jax.xla.compiler",
                      GRAPH["reinforce_jax.xla.compiler"] | {"reinforce_jax.xla.prng"})
  with pytest.raises(AssertionError, match="import cycle"):
    test_no_import_cycle()
