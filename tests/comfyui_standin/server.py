"""Stand-in for ComfyUI's server.PromptServer (see README.md): progress text as it would go to the browser."""

from __future__ import annotations


class PromptServer:
    instance = None

    def __init__(self):
        self.texts: list[tuple[str, str]] = []
        PromptServer.instance = self

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((str(node_id), text if isinstance(text, str) else text.decode()))
