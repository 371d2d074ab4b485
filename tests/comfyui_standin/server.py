"""Stand-in for ComfyUI's server.PromptServer (see README.md): progress text as it would go to the browser."""

from __future__ import annotations


class PromptServer:
    instance = None

    def __init__(self):
        self.texts: list[tuple[str, str]] = []
        self.on_prompt_handlers = []
        PromptServer.instance = self

    def add_on_prompt_handler(self, handler):
        self.on_prompt_handlers.append(handler)

    def trigger_on_prompt(self, json_data):  # what POST /prompt does first (before validation and the cache)
        for handler in self.on_prompt_handlers:
            json_data = handler(json_data)
        return json_data

    def send_progress_text(self, text, node_id, sid=None):
        self.texts.append((str(node_id), text if isinstance(text, str) else text.decode()))
