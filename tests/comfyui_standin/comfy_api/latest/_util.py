"""Stand-in for comfy_api.latest.Types.VideoComponents (see README.md)."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Optional


@dataclass
class VideoComponents:
    images: Any
    audio: Optional[dict] = None
    frame_rate: Fraction = Fraction(1)
    metadata: Optional[dict] = None
