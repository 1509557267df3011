"""How a number, a duration and a count read, the same in the app, the CLI, the reports and the sweep table.

>>> number(None), number(3.14159), duration(130), plural(2000, "step")
('–', '3.142', '2m 10s', '2,000 steps')
"""

from __future__ import annotations


def number(value: float | None, spec: str = ".3f") -> str:
    """None -> '–' (nothing measured); 3.14159 -> '3.142'; (3.14159, '.2f') -> '3.14'."""
    return "–" if value is None else format(value, spec)


def duration(seconds: float) -> str:
    """45 -> '45s', 130 -> '2m 10s', 3720 -> '1h 2m'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def plural(n: int, word: str) -> str:
    """1, 'act' -> '1 act'; 2, 'act' -> '2 acts'; 2000, 'step' -> '2,000 steps'."""
    return f"{n:,} {word}{'' if n == 1 else 's'}"
