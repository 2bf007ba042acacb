"""The loss curve of a training run as an inline SVG: each step's loss (light) and its running mean (dark), with the
step and loss ranges on the axes. Plain SVG, so the page needs no plotting library and tests can read it."""
from __future__ import annotations

import html
import math

WIDTH, HEIGHT = 560, 220
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 12, 12, 30
SMOOTHING = 0.9  # weight of the running mean's past (an exponential moving average, debiased)


def running_mean(values: list[float], smoothing: float = SMOOTHING) -> list[float]:
    """The debiased exponential moving average of ``values``."""
    out, mean = [], 0.0
    for i, v in enumerate(values, 1):
        mean = smoothing * mean + (1 - smoothing) * v
        out.append(mean / (1 - smoothing ** i))
    return out


def _polyline(points: list[tuple[float, float]], css_class: str) -> str:
    coords = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    return f'<polyline class="{css_class}" points="{coords}" fill="none"/>'


def loss_svg(losses: list[tuple[int, float]], title: str = "loss") -> str:
    """The SVG of ``losses`` ((step, loss) pairs, in order); a placeholder line while there are fewer than two."""
    finite = [(s, v) for s, v in losses if math.isfinite(v)]
    if len(finite) < 2:
        return '<div class="sd-loss-empty">The loss curve appears after the first training steps.</div>'
    steps = [s for s, _ in finite]
    values = [v for _, v in finite]
    smooth = running_mean(values)
    lo, hi = min(values), max(values)
    hi = hi if hi > lo else lo + 1e-6
    s0, s1 = steps[0], steps[-1] if steps[-1] > steps[0] else steps[0] + 1
    plot_w, plot_h = WIDTH - MARGIN_LEFT - MARGIN_RIGHT, HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def xy(step: int, value: float) -> tuple[float, float]:
        return (MARGIN_LEFT + (step - s0) / (s1 - s0) * plot_w, MARGIN_TOP + (hi - value) / (hi - lo) * plot_h)

    raw = _polyline([xy(s, v) for s, v in finite], "sd-loss-raw")
    mean = _polyline([xy(s, v) for s, v in zip(steps, smooth, strict=True)], "sd-loss-mean")
    bottom, right = HEIGHT - MARGIN_BOTTOM, WIDTH - MARGIN_RIGHT
    labels = (f'<text x="{MARGIN_LEFT - 4}" y="{MARGIN_TOP + 10}" text-anchor="end">{hi:.4g}</text>'
              f'<text x="{MARGIN_LEFT - 4}" y="{bottom}" text-anchor="end">{lo:.4g}</text>'
              f'<text x="{MARGIN_LEFT}" y="{HEIGHT - 10}">step {s0}</text>'
              f'<text x="{right}" y="{HEIGHT - 10}" text-anchor="end">step {steps[-1]}</text>'
              f'<text x="{(MARGIN_LEFT + right) / 2:.0f}" y="{HEIGHT - 10}" text-anchor="middle">'
              f'{html.escape(title)} (last {values[-1]:.4f}, mean {smooth[-1]:.4f})</text>')
    axes = (f'<line x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" y2="{bottom}" class="sd-loss-axis"/>'
            f'<line x1="{MARGIN_LEFT}" y1="{bottom}" x2="{right}" y2="{bottom}" class="sd-loss-axis"/>')
    return (f'<svg class="sd-loss-plot" viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" role="img" '
            f'aria-label="{html.escape(title)} curve over {len(finite)} steps" data-points="{len(finite)}">'
            f'{axes}{raw}{mean}{labels}</svg>')
