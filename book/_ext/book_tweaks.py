"""Small Sphinx fixes for an offline, console-error-free Jupyter Book 1 site.

1. JB1 registers the sphinx-thebe inline script twice per page, which declares
   ``THEBE_JS_URL`` twice (a console error): keep the first copy of every script.
"""

from __future__ import annotations

from typing import Any


def _dedupe_scripts(app: Any, pagename: str, templatename: str, context: dict, doctree: Any) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[str] = set()
    unique = []
    for script in scripts:
        key = f"{getattr(script, 'filename', script) or ''}|{getattr(script, 'attributes', {}).get('body', '')}"
        if key in seen:
            continue
        seen.add(key)
        unique.append(script)
    context["script_files"] = unique


def setup(app: Any) -> dict[str, Any]:
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
