"""Per-browser-session temporary folders: every file a session's requests make lives under one folder,
removed when the session ends (the page is closed or reloaded; Blocks.unload)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import gradio as gr

ROOT = Path(tempfile.gettempdir()) / "r2d3_sessions"


def _session_root(request: gr.Request | None) -> Path:
    session = getattr(request, "session_hash", None) or "no-session"  # API calls without a session share one
    return ROOT / re.sub(r"[^A-Za-z0-9_-]", "_", str(session))


def session_dir(request: gr.Request | None, prefix: str) -> Path:
    """A new, empty folder for one request's files, inside the session's folder."""
    root = _session_root(request)
    root.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}_", dir=root))


def end_session(request: gr.Request) -> None:
    shutil.rmtree(_session_root(request), ignore_errors=True)


def refusal(message: str) -> gr.Error:
    """A user's input refused: the message on the page and one line in the server's log (no traceback: nothing
    is broken). Faults (a model that cannot load) raise gr.Error as usual, with their traceback."""
    return gr.Error(message, print_exception=False)
