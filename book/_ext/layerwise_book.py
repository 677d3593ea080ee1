"""The book's own Sphinx extension (``_config.yml``: ``sphinx.local_extensions``).

Sphinx 7.4 lists a script body that an extension adds after the builder has started (sphinx-thebe's
``const THEBE_JS_URL = ...``) twice on every page, once under the file name ``None`` and once under
``''``; the second copy throws "Identifier 'THEBE_JS_URL' has already been declared" in the
reader's console. This drops repeated scripts from each page (tests/test_browser.py fails on any
console error).
"""

from __future__ import annotations


def drop_repeated_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, kept = set(), []
    for js in context.get("script_files", []):
        attributes = getattr(js, "attributes", {})
        key = (getattr(js, "filename", js) or "", tuple(sorted((k, str(v)) for k, v in attributes.items())))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", drop_repeated_scripts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
