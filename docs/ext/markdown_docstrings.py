"""Reads reinforce_jax's docstrings, Google style with Markdown inline syntax, as reST.

The package's docstrings are written to read well in a terminal and on GitHub: `code` in single
backticks, ```python fences, code indented under a line ending in a colon, lists that follow
their paragraph directly, references wrapped over several lines. reStructuredText reads each of
those differently (single backticks are "interpreted text", an indented block is a quote, ...),
so this converts them before napoleon turns the Google sections into reST:

* `x` becomes ``x`` (with escaped spaces where a word touches it: `Foo`s);
* a ```lang fence becomes a `code-block` directive;
* an indented block after a blank line under a paragraph ending in ":" becomes a literal block;
* a list right after its paragraph, and text right after a list, get the blank line reST needs;
* the continuation lines of a `References:` entry join their entry, one bullet per entry.

Also drops the docstring of a data value that is only its type's (a dict's "dict() -> new empty
dictionary").
"""

from __future__ import annotations

import re

# Google-style section headers that napoleon parses itself: left alone.
_SECTIONS = re.compile(
    r"^\s*(Args|Arguments|Attributes|Caution|Danger|Error|Example|Examples|Hint|Important|"
    r"Keyword Args|Keyword Arguments|Methods|Note|Notes|Other Parameters|Parameters|Raises|"
    r"References|Return|Returns|See Also|Tip|Todo|Warning|Warnings|Warns|Yield|Yields)\s*:\s*$")
_FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
_BULLET = re.compile(r"^\s*(?:[*+-]|\d+[.)])\s+\S")
_INLINE = re.compile(r"(?<![`\\:])`([^`\n]+?)`(?![`_])")


def _indent(line: str) -> int:
  return len(line) - len(line.lstrip())


def _inline(line: str) -> str:
  # Outside code, "|x|" would be a reST substitution reference.
  parts = re.split(r"(`[^`]*`)", line)
  line = "".join(part if part.startswith("`") else part.replace("|", "\\|") for part in parts)

  def replace(match: re.Match) -> str:
    before = line[match.start() - 1] if match.start() else " "
    after = line[match.end()] if match.end() < len(line) else " "
    # A zero-width space between a period and a space inside code: autosummary cuts its
    # one-line summary at a period and whitespace, and a cut inside ``0 .. n`` leaves an
    # unclosed literal (a warning).
    text = "``" + match[1].replace(". ", ".\u200b ") + "``"
    if before.isalnum():
      text = "\\ " + text
    if after.isalnum():
      text += "\\ "
    return text

  return _INLINE.sub(replace, line)


def _fences(lines: list[str]) -> list[str]:
  out, fence = [], None
  for line in lines:
    match = _FENCE.match(line)
    if fence is None and match:
      fence = match[1]
      out += [f"{fence}.. code-block:: {match[2] or 'text'}", ""]
    elif fence is not None and match and match[1] == fence and not match[2]:
      fence = None
      out.append("")
    elif fence is not None:
      out.append(f"{fence}   {line[len(fence):] if line.startswith(fence) else line.lstrip()}")
    else:
      out.append(line)
  return out


def _references(lines: list[str]) -> list[str]:
  out, i = [], 0
  while i < len(lines):
    line = lines[i]
    out.append(line)
    i += 1
    if not re.match(r"^\s*References?\s*:\s*$", line):
      continue
    header = _indent(line)
    entries, base = [], None
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > header):
      current = lines[i]
      i += 1
      if not current.strip():
        continue
      base = _indent(current) if base is None else base
      continues = entries and (_indent(current) > base or not entries[-1].endswith((".", ")")))
      if continues:
        entries[-1] += " " + current.strip()
      else:
        entries.append(current.strip())
    out += [f"{' ' * (base or header + 4)}- {entry}" for entry in entries]
    if i < len(lines):
      out.append("")
  return out


def _join_split_spans(lines: list[str]) -> list[str]:
  """Joins a line whose `code` span goes on to the next line (Markdown allows it, reST not)."""
  out: list[str] = []
  for line in lines:
    if out and out[-1].strip() and line.strip() and _unclosed(out[-1]):
      out[-1] = f"{out[-1].rstrip()} {line.strip()}"
    else:
      out.append(line)
  return out


def _unclosed(line: str) -> bool:
  return len(re.findall(r"(?<!`)`(?!`)", line)) % 2 == 1


def convert(lines: list[str]) -> list[str]:
  """The reST for one docstring's lines (already dedented by autodoc)."""
  lines = _references(_join_split_spans(_fences(lines)))
  out: list[str] = []
  literal_indent = None  # inside a literal block (code): lines indented deeper than this
  for line in lines:
    stripped = line.strip()
    if literal_indent is not None:
      if not stripped or _indent(line) > literal_indent:
        out.append(line)
        continue
      literal_indent = None
      if out and out[-1].strip():
        out.append("")
    if stripped.startswith(".. code-block::") or line.rstrip().endswith("::"):
      out.append(_inline(line) if not stripped.startswith("..") else line)
      literal_indent = _indent(line)
      continue
    previous = next((p for p in reversed(out) if p.strip()), None)
    # Markdown's indented code: a deeper block after a blank line under a paragraph.
    if (stripped and previous is not None and not out[-1].strip()
        and not previous.rstrip().endswith("::") and not _SECTIONS.match(previous)
        and _indent(line) > _indent(previous) and not _BULLET.match(line)
        and not _in_list(out[:-1]) and not stripped.startswith(">>>")):
      if previous.rstrip().endswith(":"):
        index = len(out) - 1 - next(i for i, p in enumerate(reversed(out)) if p.strip())
        out[index] = out[index].rstrip() + ":"
      else:
        out += [" " * _indent(previous) + "::", ""]
      literal_indent = _indent(previous)
      out.append(line)
      continue
    if stripped.startswith((">>>", "...")):
      out.append(line)
      continue
    if stripped and out and out[-1].strip() and not _SECTIONS.match(out[-1]):
      last = out[-1]
      starts_list = _BULLET.match(line) and not _BULLET.match(last) and (
          _indent(line) >= _indent(last)) and last.rstrip().endswith(":")
      ends_list = (not _BULLET.match(line) and _indent(line) < _indent(last)
                   and _in_list(out))
      if starts_list or ends_list:
        out.append("")
    out.append(_inline(line))
  return out


def _in_list(out: list[str]) -> bool:
  """Whether the paragraph that `out` ends with is a list item (or its continuation)."""
  for line in reversed(out):
    if not line.strip():
      return False
    if _BULLET.match(line):
      return True
  return False


def _process(app, what, name, obj, options, lines) -> None:
  del app, name, options
  if what in ("data", "attribute") and lines:
    own = getattr(type(obj), "__doc__", None)
    if isinstance(own, str) and [line.strip() for line in lines if line.strip()] == [
        line.strip() for line in own.splitlines() if line.strip()]:
      lines[:] = []
      return
  lines[:] = convert(lines)


def setup(app):
  # Before napoleon (priority 500), which expects reST inside the Google sections.
  app.connect("autodoc-process-docstring", _process, priority=400)
  return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
