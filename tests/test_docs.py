"""The documentation's code runs, and the API reference lists every public name.

Every fenced block whose info string is exactly `python`, in README.md and in each page under
docs/, runs here: a page's blocks in order, in one fresh namespace, with the working directory
a temporary folder and matplotlib's Agg backend. Blocks written as a ```{code-block} python
directive (GPU, multi-host or optional-extra code) are shown on the site but never run. The
docs build itself (`make docs`) executes nothing.
"""

import importlib.util
import pathlib
import re
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
EXCLUDED = (DOCS / "_build", DOCS / "api" / "generated")

# Pages whose blocks take more than about 5 s on a 2-core CPU: `make test-slow` runs them.
SLOW = frozenset({"docs/guides/stochastic_nodes.md", "docs/howto/policies.md",
                  "docs/howto/custom_algorithm.md", "docs/migration/from_optax_monte_carlo.md",
                  "docs/guides/policy_gradients.md", "docs/guides/sequence_models.md",
                  "docs/guides/sequence_losses.md", "docs/migration/from_purejaxrl_rejax.md"})

# MyST directives whose body is Markdown (an admonition, a figure's caption, ...): fenced blocks
# inside them are read as blocks of the page. Any other fence is literal text.
_LITERAL_DIRECTIVES = frozenset({"code-block", "code", "sourcecode", "code-cell", "eval-rst",
                                 "math", "literalinclude", "include", "raw", "mermaid"})
_FENCE = re.compile(r"^(?P<indent> {0,3}|\s*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")


def _pages():
  pages = [ROOT / "README.md"]
  for page in sorted(DOCS.rglob("*.md")):
    if not any(page.is_relative_to(folder) for folder in EXCLUDED):
      pages.append(page)
  return [page for page in pages if page.exists()]


def python_blocks(text):
  """`(first line number, code)` for each ```python block of a Markdown page, in order."""
  blocks = []
  containers = []  # the fences of open Markdown-bodied directives: (char, length)
  literal = None  # the open literal fence: (char, length, indent, is_python, start, lines)
  for number, line in enumerate(text.splitlines(), start=1):
    match = _FENCE.match(line)
    if literal is not None:
      char, length, indent, is_python, start, lines = literal
      if (match and match["fence"][0] == char and len(match["fence"]) >= length
          and not match["info"].strip()):
        if is_python:
          blocks.append((start, textwrap.dedent("\n".join(lines))))
        literal = None
      else:
        # Strip the fence's own indentation (a block in a list item), no more.
        lines.append(line[min(indent, len(line) - len(line.lstrip(" "))):])
      continue
    if not match:
      continue
    char, length, info = match["fence"][0], len(match["fence"]), match["info"].strip()
    if char == "`" and "`" in info:
      continue  # inline code that opens a line, not a fence
    if (not info and containers and containers[-1][0] == char
        and length >= containers[-1][1]):
      containers.pop()
      continue
    directive = re.match(r"^\{([\w:-]+)\}", info)
    if directive and directive[1] not in _LITERAL_DIRECTIVES:
      containers.append((char, length))
      continue
    literal = (char, length, len(match["indent"]), info == "python", number + 1, [])
  return blocks


PAGES = _pages()
_IDS = [str(page.relative_to(ROOT)) for page in PAGES]


@pytest.mark.parametrize(
    "page",
    [pytest.param(page, marks=[pytest.mark.slow] if rel in SLOW else [], id=rel)
     for page, rel in zip(PAGES, _IDS, strict=True)])
def test_python_blocks_run(page, tmp_path, monkeypatch):
  blocks = python_blocks(page.read_text())
  if not blocks:
    pytest.skip("no ```python blocks")
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "__docs__"}
  try:
    for start, code in blocks:
      # Padding puts each line at its line number in the page, so a traceback points there.
      exec(compile("\n" * (start - 1) + code, str(page), "exec"), namespace)  # noqa: S102
  finally:
    plt.close("all")


def test_python_blocks_are_not_empty():
  empty = [f"{page.relative_to(ROOT)}:{start}" for page in PAGES
           for start, code in python_blocks(page.read_text()) if not code.strip()]
  assert not empty, f"empty ```python blocks at {empty}"


def _coverage_check():
  path = DOCS / "ext" / "coverage_check.py"
  spec = importlib.util.spec_from_file_location("coverage_check", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_api_reference_lists_every_public_name():
  coverage = _coverage_check()
  absent = coverage.missing(coverage.listed_names(DOCS / "api"))
  assert not absent, f"add these to an autosummary in docs/api/*.rst: {absent}"


def test_api_reference_entries_exist():
  coverage = _coverage_check()
  stale = []
  for name in sorted(coverage.listed_names(DOCS / "api")):
    try:
      coverage.resolve(name)
    except (ImportError, AttributeError):
      stale.append(name)
  assert not stale, f"docs/api/*.rst lists names that do not exist: {stale}"


def test_block_extraction():
  page = textwrap.dedent("""\
      ```python
      def f():
          return 1
      ```
      ```{code-block} python
      never_run()
      ```
      ````{note}
      ```python
      b = a
      ```
      ````
      `````markdown
      ```python
      shown_not_run()
      ```
      `````
      ```python3
      not_exact()
      ```
      """)
  assert python_blocks(page) == [(2, "def f():\n    return 1"), (10, "b = a")]
