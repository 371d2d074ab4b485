"""The run's progress on the node: ComfyUI's progress bar, the stage as progress text with the time left, and the
text the node keeps once the run ends (done, cancelled or failed)."""

from __future__ import annotations

import logging
import textwrap
import time

from comfy.utils import ProgressBar
from server import PromptServer

log = logging.getLogger("latentsync.comfyui")

TEXT_SECONDS = 0.5  # the stage text is sent at most this often (it goes over the websocket)
NODE_TEXT_WIDTH = 52  # characters of one line of the node's text at its default width (it shows two lines)


def duration(seconds: float) -> str:
    """``seconds`` as a person says it: 40 s, 3 min, 1 h 5 min."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {round(seconds % 3600 / 60)} min"


class NodeProgress:
    """Library progress (stage, done, total) -> this node's bar, and "stage: done/total, 2 min left" as its text."""

    def __init__(self, node_id: str | None):
        self.node_id = node_id
        self.bar = ProgressBar(1, node_id=node_id)
        self.stage, self.done, self.total = None, 0.0, 0
        self.sent = 0.0
        self.stage_start = (0.0, 0.0)  # (time, done) when the stage's first unit of work was reported

    def __call__(self, stage: str, done: float, total: int) -> None:
        now = time.monotonic()
        if stage != self.stage:
            log.info("LatentSync: %s", stage)
            self.stage, self.sent, self.stage_start = stage, 0.0, (now, done)
        self.done, self.total = done, total
        if total > 0:
            self.bar.update_absolute(min(done, total), total)
        if now - self.sent >= TEXT_SECONDS or done >= total:
            self.sent = now
            self._text(f"{stage}: {int(done)}/{total}{self._left(now)}")

    def _left(self, now: float) -> str:
        started, first = self.stage_start
        if self.done <= first or self.done >= self.total:
            return ""  # no rate before the stage's first step is done
        rate = (now - started) / (self.done - first)
        return f", {duration(rate * (self.total - self.done))} left"

    def finish(self, text: str, warnings: list[str] = ()) -> None:
        """The text the node keeps after the run: its outcome and the label of every warning (the node shows two
        lines; the whole sentences go to the log)."""
        for warning in warnings:
            log.warning("LatentSync: %s", warning)
        if warnings:
            labels = "; ".join(warning.split(":")[0] for warning in warnings)
            text += "\n" + textwrap.shorten(f"warning: {labels}", NODE_TEXT_WIDTH, placeholder="...")
        self._text(text)

    def stopped(self, how: str) -> None:
        """Replace the last stage text, which would go stale, with what happened and where."""
        where = f" at {self.stage} {int(self.done)}/{self.total}" if self.stage else ""
        self._text(f"{how}{where}")

    def _text(self, text: str) -> None:
        if self.node_id is not None:
            PromptServer.instance.send_progress_text(text, self.node_id)
