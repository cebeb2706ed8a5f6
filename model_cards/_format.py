"""Small number and time formatting for model cards."""

from __future__ import annotations

import math


def _finite(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _number(value, digits=3):
    return f"{value:.{digits}f}" if _finite(value) else "—"


def _signed(figure_like):
    value, low, high = (figure_like.get(k) for k in ("value", "low", "high"))
    if not _finite(value):
        return "—"
    text = f"{value:+.3f}"
    if _finite(low) and _finite(high):
        text += f" [{low:+.3f}, {high:+.3f}]"
    return text


def _interval(figure):
    return f"[{figure.low:.3f}, {figure.high:.3f}]" if figure.has_interval else "—"


def _count(value):
    if not _finite(value):
        return "—"
    return f"{value:,.0f}" if abs(value) >= 1 else f"{value:g}"


def _duration(seconds):
    if not _finite(seconds):
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s"
