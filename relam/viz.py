"""Figures shared by the notebooks (matplotlib, headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from relam.data.store import EpisodeSet  # noqa: E402


def demo_first_last(paths: dict[str, Path], n_per_task: int = 3):
    """Grid: one row per task, first and last frame of ``n_per_task`` demos side by side."""
    tasks = list(paths)
    fig, axes = plt.subplots(len(tasks), 2 * n_per_task, figsize=(2 * n_per_task * 1.6, len(tasks) * 1.75),
                             squeeze=False)
    for r, task in enumerate(tasks):
        with EpisodeSet(paths[task]) as ds:
            for k in range(n_per_task):
                for j, which in enumerate(("first", "last")):
                    ax = axes[r, 2 * k + j]
                    ax.set_xticks([]), ax.set_yticks([])
                    if k >= len(ds):
                        ax.axis("off")
                        continue
                    rec = ds[k]
                    ax.imshow(rec.frames[0 if which == "first" else -1])
                    ax.set_title(f"demo {k} {which}" + (f" (t={rec.length - 1})" if which == "last" else ""),
                                 fontsize=7)
        axes[r, 0].set_ylabel(task, fontsize=9)
    fig.suptitle("Expert demos: first and last frame (last = 10 frames after the simulator's first success)",
                 fontsize=9)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path) -> Path:
    from relam.io import atomic_path
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, bbox_inches="tight", format=path.suffix.lstrip("."))
    plt.close(fig)
    return path
