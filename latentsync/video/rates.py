"""Exact frame rates: 23.976, 29.97, 59.94 ... given as floats mean the NTSC rates n*1000/1001."""

from __future__ import annotations

from fractions import Fraction

NTSC_RATES = tuple(Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120))


def frame_rate(fps: float | Fraction) -> Fraction:
    """A rate as an exact fraction, NTSC floats snapped to n*1000/1001."""
    rate = Fraction(fps)
    for ntsc in NTSC_RATES:
        if abs(rate - ntsc) < Fraction(1, 100):
            return ntsc
    return rate.limit_denominator(1001)
