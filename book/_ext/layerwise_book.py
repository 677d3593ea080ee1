"""The book's own Sphinx extension (``_config.yml``: ``sphinx.local_extensions``).

It adds the book's stylesheet (``static/layerwise.css``: code cells sized so that 88 characters
fit the code box) and works around a Sphinx bug: Sphinx 7.4 lists a script body that an
extension adds after the builder has started (sphinx-thebe's ``const THEBE_JS_URL = ...``) twice
on every page, once under the file name ``None`` and once under ``''``, and the second copy throws
"Identifier 'THEBE_JS_URL' has already been declared" in the reader's console. Repeated scripts
are dropped from each page (tests/test_browser.py fails on any console error).
"""

from __future__ import annotations

from pathlib import Path

STATIC = Path(__file__).resolve().parent / "static"


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, kept = set(), []
    for js in context.get("script_files", []):
        attributes = getattr(js, "attributes", {})
        key = (getattr(js, "filename", js) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def add_static_path(app) -> None:
    app.config.html_static_path.append(str(STATIC))


def setup(app):
    app.connect("builder-inited", add_static_path)
    app.add_css_file("layerwise.css")
    app.connect("html-page-context", drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
