"""Drop repeated <script> entries from each page.

Under Jupyter Book 1.0.4, sphinx-thebe's inline configuration script (``const THEBE_JS_URL = ...``) is
registered twice, and the second ``const`` declaration throws in the browser. Identical scripts are removed here,
keeping the first of each and the order.
"""


def dedupe(app, pagename, templatename, context, doctree):
    seen, unique = set(), []
    for script in context.get("script_files", []):
        filename = getattr(script, "filename", script) or ""  # inline scripts: None or "", same thing
        key = (str(filename), tuple(sorted((k, str(v)) for k, v in getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique


def setup(app):
    app.connect("html-page-context", dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

