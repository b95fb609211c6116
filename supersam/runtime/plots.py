"""Figures of rank-layers (paper Fig. 3), train, search and compare (paper Fig. 4 and 5).

Every function builds a matplotlib figure (Agg backend) and saves it atomically
with :func:`supersam.runtime.io.save_figure`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from supersam.runtime.io import save_figure


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


_PARETO_X = {  # axis -> (candidate attribute, scale, label)
    "params": ("params", 1e-6, "parameters (M, all of SAM)"),
    "macs": ("macs", 1e-9, "GMACs (one image + one prompt)"),
    "latency": ("latency_ms", 1.0, "predicted encoder latency (ms, this device)"),
}


def plot_pareto(
    path: str | Path,
    candidates: Sequence,
    front: Sequence,
    best=None,
    max_params: int | None = None,
    min_miou: float | None = None,
    metric: str = "miou",
    title: str = "",
    x: str = "params",
    x_limit: float | None = None,
) -> Path:
    """Scatter of every candidate (cost ``x`` vs mIoU), the frontier, the constraints and the best.

    Args:
        x: ``params`` (millions), ``macs`` (GMACs) or ``latency`` (predicted ms).
        x_limit: the constraint on ``x`` in its own unit (params, MACs, ms); default ``max_params`` for params.
    """
    attr, scale, xlabel = _PARETO_X[x]
    limit = max_params if x == "params" and x_limit is None else x_limit
    candidates = [c for c in candidates if getattr(c, attr, None) is not None]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ok = [c for c in candidates if c.feasible]
    bad = [c for c in candidates if not c.feasible]
    for group, colour, label in ((bad, "0.7", "infeasible"), (ok, "tab:blue", "feasible")):
        if group:
            ax.scatter(
                [getattr(c, attr) * scale for c in group],
                [c.value(metric) for c in group],
                s=12,
                c=colour,
                label=label,
                zorder=2,
            )
    if front:
        ax.step(
            [getattr(c, attr) * scale for c in front],
            [c.value(metric) for c in front],
            where="post",
            color="tab:orange",
            label="Pareto frontier",
            zorder=3,
        )
    if limit:
        ax.axvline(limit * scale, color="tab:red", ls="--", lw=1, label=f"max {x}")
    if min_miou:
        ax.axhline(min_miou, color="tab:green", ls="--", lw=1, label=f"min {metric}")
    if best is not None and getattr(best, attr, None) is not None:
        ax.scatter(
            [getattr(best, attr) * scale],
            [best.value(metric)],
            marker="*",
            s=160,
            c="tab:red",
            label="best" if best.feasible else "closest (infeasible)",
            zorder=4,
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(title or "subnet search")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_importance(
    path: str | Path, importance: Sequence[float], prunable: Sequence[int], metric: str = "miou", title: str = ""
) -> Path:
    """Bar chart of each block's importance (metric drop when it alone is removed); prunable blocks highlighted."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    colours = ["tab:red" if b == 0 else "tab:orange" if b in prunable else "tab:blue" for b in range(len(importance))]
    ax.bar(range(len(importance)), importance, color=colours)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(range(len(importance)))
    ax.set_xlabel("encoder block (red: block 0, never pruned; orange: prunable)")
    ax.set_ylabel(f"{metric} drop when removed")
    ax.set_title(title or "layer importance")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_curve(path: str | Path, curve: Sequence[dict], n_prunable: int, metric: str = "miou", title: str = "") -> Path:
    """Greedy layer-removal curve: params (M) vs metric, each point labelled with the block just dropped."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    xs = [p["params"] / 1e6 for p in curve]
    ys = [p[metric] for p in curve]
    ax.plot(xs, ys, marker="o", color="tab:blue")
    for i, point in enumerate(curve[1:], start=1):
        ax.annotate(
            str(point["dropped"][-1]),
            (xs[i], ys[i]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    if 0 < n_prunable < len(curve):
        ax.scatter(
            [xs[n_prunable]],
            [ys[n_prunable]],
            s=120,
            facecolors="none",
            edgecolors="tab:red",
            label=f"chosen prunable set ({n_prunable} blocks)",
            zorder=3,
        )
        ax.legend(fontsize=8)
    ax.set_xlabel("parameters (M, all of SAM)")
    ax.set_ylabel(metric)
    ax.set_title(title or "greedy layer removal")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_history(
    path: str | Path, history: Sequence[dict], target: float | None = None, title: str = "", probes: Sequence[dict] = ()
) -> Path:
    """Sandwich-training curve: validation mIoU of the min, max and fixed random subnet per iteration,
    and the smallest subnet's target probes (``probes``: iteration, miou_min) as a thin line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    if probes:
        ax.plot(
            [p["iteration"] for p in probes],
            [p["miou_min"] for p in probes],
            color="tab:blue",
            lw=0.8,
            alpha=0.5,
            label="min subnet (target probe)",
        )
    its = [h["iteration"] for h in history]
    for key, colour in (("miou_max", "tab:green"), ("miou_random", "tab:orange"), ("miou_min", "tab:blue")):
        ax.plot(
            its,
            [h.get(key) for h in history],
            marker="o",
            ms=3,
            color=colour,
            label=key.replace("miou_", "") + " subnet",
        )
    if target is not None:
        ax.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:.3f}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation mIoU")
    ax.set_title(title or "sandwich training")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_subnet_distributions(
    path: str | Path, miou: dict[str, Sequence[float]], params: Sequence[int], metric: str = "miou", title: str = ""
) -> Path:
    """Paper Fig. 4: the mIoU of the same sampled subnets in each variant's supernet.

    Left: a box plot per variant (every subnet a dot); right: params (M) vs mIoU
    per variant, so the same subnet can be compared across variants.

    Args:
        miou: variant -> mIoU per subnet (all lists in the order of ``params``).
        params: parameters of all of SAM per subnet.
    """
    plt = _pyplot()
    fig, (box, scatter) = plt.subplots(1, 2, figsize=(10.0, 4.2), gridspec_kw={"width_ratios": [1, 1.4]})
    names = list(miou)
    box.boxplot([miou[v] for v in names], showmeans=True)
    box.set_xticks(range(1, len(names) + 1), names)
    for i, v in enumerate(names, start=1):
        box.scatter([i + 0.12] * len(miou[v]), miou[v], s=8, alpha=0.5, color="0.3", zorder=3)
    box.set_ylabel(metric)
    box.set_title(f"{len(params)} sampled subnets per variant")
    box.grid(alpha=0.3, axis="y")
    xs = [p / 1e6 for p in params]
    for v in names:
        scatter.scatter(xs, miou[v], s=14, alpha=0.8, label=v)
    scatter.set_xlabel("parameters (M, all of SAM)")
    scatter.set_ylabel(metric)
    scatter.grid(alpha=0.3)
    scatter.legend(fontsize=8)
    fig.suptitle(title or "subnet mIoU per reordering variant")
    return _save(fig, path)


def plot_frontiers(
    path: str | Path, fronts: dict[str, Sequence[dict]], metric: str = "miou", title: str = "", x: str = "params"
) -> Path:
    """Paper Fig. 5: every variant's search Pareto frontier on one plot.

    Args:
        fronts: variant -> frontier points (``pareto.json``: ``params``, ``macs``, ``latency_ms``, ``<metric>``).
        x: the cost axis the frontiers were built on (``search.pareto_x``): ``params`` (M), ``macs`` (GMACs) or
            ``latency`` (predicted ms); a frontier is only a frontier on its own axis.
    """
    key, scale, label = _PARETO_X[x]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for v, front in fronts.items():
        if front:
            ax.step(
                [p[key] * scale for p in front], [p[metric] for p in front], where="post", marker="o", ms=4, label=v
            )
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.set_title(title or "Pareto frontiers of the searches")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)
