"""Small Sphinx fixes for an offline, console-error-free Jupyter Book 1 site.

1. JB1 registers the sphinx-thebe inline script twice per page, which declares
   ``THEBE_JS_URL`` twice (a console error): keep the first copy of every script.
2. The repository address is one setting, ``repository.url`` in ``_config.yml``. With it set, the
   pages get the repository button and the Colab / Binder launch buttons; with it empty (the
   default: this book has no public home yet) they get neither, because a launch button that
   points at a repository that does not exist is a broken link. The download button stays.
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


def _buttons_follow_repository(app: Any, config: Any) -> None:
    options = dict(config.html_theme_options or {})
    has_repository = bool(str(options.get("repository_url") or "").strip())
    options["use_repository_button"] = has_repository
    if not has_repository:
        options["launch_buttons"] = {}
    config.html_theme_options = options


def setup(app: Any) -> dict[str, Any]:
    app.connect("config-inited", _buttons_follow_repository)
    app.connect("html-page-context", _dedupe_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
