"""Sphinx configuration: the documentation is built from docs/ and from the
library's own docstrings (``sphinx-build -W -b html docs docs/_build/html``)."""

project = "repred"
author = "the repred authors"
copyright = "2026, the repred authors"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # the docstrings' "Args:" / "Raises:" sections
]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_preserve_defaults = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

html_theme = "alabaster"
html_title = "repred"
exclude_patterns = ["_build"]
