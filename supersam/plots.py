"""Figures of the rank-layers (paper Fig. 3) and search (paper Fig. 4) stages.

Every function builds a matplotlib figure (Agg backend) and saves it atomically
with :func:`supersam.io.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from supersam.io import save_figure


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out, write atomically and close ``fig``."""
    fig.tight_layout()
    try:
        return save_figure(fig, path, dpi=120)
    finally:
        _pyplot().close(fig)


def plot_pareto(path: str | Path, candidates: Sequence, front: Sequence, best=None,
                max_params: int | None = None, min_miou: float | None = None,
                metric: str = "miou", title: str = "") -> Path:
    """Scatter of every candidate (params in millions vs mIoU), the frontier, the constraints and the best."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ok = [c for c in candidates if c.feasible]
    bad = [c for c in candidates if not c.feasible]
    for group, colour, label in ((bad, "0.7", "infeasible"), (ok, "tab:blue", "feasible")):
        if group:
            ax.scatter([c.params / 1e6 for c in group], [c.value(metric) for c in group],
                       s=12, c=colour, label=label, zorder=2)
    if front:
        ax.step([c.params / 1e6 for c in front], [c.value(metric) for c in front], where="post",
                color="tab:orange", label="Pareto frontier", zorder=3)
    if max_params:
        ax.axvline(max_params / 1e6, color="tab:red", ls="--", lw=1, label="max params")
    if min_miou:
        ax.axhline(min_miou, color="tab:green", ls="--", lw=1, label=f"min {metric}")
    if best is not None:
        ax.scatter([best.params / 1e6], [best.value(metric)], marker="*", s=160, c="tab:red",
                   label="best" if best.feasible else "closest (infeasible)", zorder=4)
    ax.set_xlabel("parameters (M, all of SAM)")
    ax.set_ylabel(metric)
    ax.set_title(title or "subnet search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_importance(path: str | Path, importance: Sequence[float], prunable: Sequence[int],
                    metric: str = "miou", title: str = "") -> Path:
    """Bar chart of each block's importance (metric drop when it alone is removed); prunable blocks highlighted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colours = ["tab:red" if b == 0 else "tab:orange" if b in prunable else "tab:blue"
               for b in range(len(importance))]
    ax.bar(range(len(importance)), importance, color=colours)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(importance)))
    ax.set_xlabel("encoder block (red: block 0, never pruned; orange: prunable)")
    ax.set_ylabel(f"{metric} drop when removed")
    ax.set_title(title or "layer importance")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_curve(path: str | Path, curve: Sequence[dict], n_prunable: int, metric: str = "miou",
               title: str = "") -> Path:
    """Greedy layer-removal curve: params (M) vs metric, each point labelled with the block just dropped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [p["params"] / 1e6 for p in curve]
    ys = [p[metric] for p in curve]
    ax.plot(xs, ys, marker="o", color="tab:blue")
    for i, point in enumerate(curve[1:], start=1):
        ax.annotate(str(point["dropped"][-1]), (xs[i], ys[i]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=7)
    if 0 < n_prunable < len(curve):
        ax.scatter([xs[n_prunable]], [ys[n_prunable]], s=120, facecolors="none", edgecolors="tab:red",
                   label=f"chosen prunable set ({n_prunable} blocks)", zorder=3)
        ax.legend(fontsize=8)
    ax.set_xlabel("parameters (M, all of SAM)")
    ax.set_ylabel(metric)
    ax.set_title(title or "greedy layer removal")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_history(path: str | Path, history: Sequence[dict], target: float | None = None, title: str = "") -> Path:
    """Sandwich-training curve: validation mIoU of the min, max and fixed random subnet per iteration."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    its = [h["iteration"] for h in history]
    for key, colour in (("miou_max", "tab:green"), ("miou_random", "tab:orange"), ("miou_min", "tab:blue")):
        ax.plot(its, [h.get(key) for h in history], marker="o", ms=3, color=colour, label=key.replace("miou_", "") + " subnet")
    if target is not None:
        ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mIoU")
    ax.set_title(title or "sandwich training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)
