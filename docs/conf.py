"""Sphinx configuration for the reinforce_jax documentation (`make docs`; see docs/README.md)."""

import pathlib
import sys

DOCS = pathlib.Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # the package from this checkout, installed or not
sys.path.insert(0, str(DOCS / "ext"))

import reinforce_jax  # noqa: E402

project = "reinforce_jax"
author = "The reinforce_jax authors"
copyright = "The reinforce_jax authors"  # noqa: A001
release = reinforce_jax.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "markdown_docstrings",
    "coverage_check",
]

# docs/README.md says how to build the site; it is not a page of it.
exclude_patterns = ["_build", "README.md", "ext", "Thumbs.db", ".DS_Store"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# Markdown (MyST): ```{directive} fences, ::: fences, $math$, definition lists, and anchors for
# headings so that [text](page.md#a-heading) links resolve.
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath", "amsmath", "smartquotes",
                          "substitution", "attrs_inline"]
myst_heading_anchors = 4

# The pages' ```python blocks run in the test suite (tests/test_docs.py), not here: a docs build
# stays a few minutes of CPU at most, and a failing snippet fails `make test` with a traceback.
nb_execution_mode = "off"

# API reference: docs/api/*.rst list names; autosummary writes a page per name into
# docs/api/generated/ (gitignored) from the docstrings (Google style, read by napoleon).
autosummary_generate = True
autosummary_imported_members = False
autodoc_default_options = {"member-order": "bysource"}
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
add_module_names = False

# Figures stay in benchmarks/results/; a page shows one as ![...](../benchmarks/results/x.png):
# Sphinx copies an image from outside docs/ into the build's _images/ like any other.

html_theme = "sphinx_book_theme"
html_title = "reinforce_jax"
html_theme_options = {
    "repository_url": "https://github.com/reinforce-jax/reinforce_jax",
    "repository_branch": "main",
    "path_to_docs": "docs",
    "use_repository_button": True,
    "use_edit_page_button": False,
    "show_toc_level": 2,
    "navigation_with_keys": False,
}

