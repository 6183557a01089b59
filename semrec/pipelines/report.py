"""PNG plots of a tokenization report (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_code_usage(level_counts: list[np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(level_counts), figsize=(4 * len(level_counts), 3.2), squeeze=False)
    for level, (ax, counts) in enumerate(zip(axes[0], level_counts)):
        c = np.sort(np.asarray(counts))[::-1]
        ax.bar(np.arange(len(c)), c, width=1.0, color="tab:blue")
        ax.set_yscale("symlog")
        used = int((c > 0).sum())
        ax.set_title(f"level {level}: {used}/{len(c)} codes used")
        ax.set_xlabel("code (sorted by count)")
        ax.set_ylabel("items")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_collision_groups(size_hist: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = np.flatnonzero(size_hist)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.bar(sizes, size_hist[sizes], color="tab:orange")
    ax.set_yscale("log")
    ax.set_xlabel("items sharing one code tuple (group size)")
    ax.set_ylabel("groups")
    ax.set_title(f"collision groups (largest: {int(sizes.max()) if len(sizes) else 0})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
