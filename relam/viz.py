"""Figures shared by the notebooks (matplotlib, headless)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import matplotlib

if "ipykernel" not in sys.modules:   # scripts and tests: no display. A notebook keeps Jupyter's inline backend, which
    matplotlib.use("Agg")             # puts the figures into the notebook (forcing Agg there left only their repr)
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


def save_figure(fig, path: Path, also: tuple[str, ...] = ()) -> Path:
    """Write ``fig`` to ``path`` (atomically; ``also``: further formats beside it, e.g. ("pdf",)), show it inline
    in a notebook, close it."""
    from relam.io import atomic_path
    path = Path(path)
    for p in [path] + [path.with_suffix("." + ext) for ext in also]:
        with atomic_path(p) as tmp:
            fig.savefig(tmp, dpi=130, bbox_inches="tight", format=p.suffix.lstrip("."))
    try:  # in a notebook show it inline: closing it below would otherwise hide it
        from IPython import get_ipython
        if get_ipython() is not None:
            from IPython.display import display
            display(fig)
    except ImportError:
        pass
    plt.close(fig)
    return path


KEYPOINT_COLORS = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48), (145, 30, 180),
                   (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40)]


def draw_points(frame, points, radius: int = 2, hollow: bool = False, scale: int = 1):
    """Copy of ``frame`` (upscaled by ``scale``) with one coloured dot (or ring) per point (pixel coords)."""
    import cv2
    import numpy as np

    img = np.ascontiguousarray(frame)
    if scale > 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for i, (u, v) in enumerate(np.asarray(points, float)):
        if not np.isfinite([u, v]).all():
            continue
        c = KEYPOINT_COLORS[i % len(KEYPOINT_COLORS)]
        cv2.circle(img, (int(round(u * scale)), int(round(v * scale))), radius * scale if not hollow else radius * scale + 2,
                   c, 1 if hollow else -1, lineType=cv2.LINE_AA)
    return img


def plot_keypoints(ax, frame, kp, title: str = ""):
    """Frame 0 with the filtered candidates (grey), keypoint tracks (lines) and keypoints (dots)."""
    import numpy as np

    ax.imshow(frame)
    for cands in kp.candidates.values():
        ax.scatter(cands[:, 0] - 0.5, cands[:, 1] - 0.5, s=1, c="white", alpha=0.35)
    for i in range(len(kp.points)):
        c = np.array(KEYPOINT_COLORS[i % len(KEYPOINT_COLORS)]) / 255
        tr = kp.tracks[:, i]
        ax.plot(tr[:, 0] - 0.5, tr[:, 1] - 0.5, "-", color=c, lw=1)
        ax.scatter([kp.points[i, 0] - 0.5], [kp.points[i, 1] - 0.5], s=25, color=c, edgecolors="k", zorder=3)
    ax.set_xlim(-0.5, frame.shape[1] - 0.5), ax.set_ylim(frame.shape[0] - 0.5, -0.5)
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title, fontsize=8)


def keyframe_montage(frames, keyframes, subgoals_px, title: str = ""):
    """One panel per keyframe with the subgoal keypoints drawn on it."""
    n = len(keyframes)
    fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9), squeeze=False)
    for ax, t, g in zip(axes[0], keyframes, subgoals_px):
        ax.imshow(draw_points(frames[t], g, radius=2, scale=2))
        ax.set_title(f"t={t}", fontsize=7)
        ax.set_xticks([]), ax.set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def subgoal_gif(frames, tracks_px, keyframes, subgoals_px, path, scale: int = 2, fps: int = 15):
    """GIF: tracked keypoints (dots) and the current subgoal (rings of the same colours), written atomically."""
    import numpy as np
    from PIL import Image

    from relam.io import atomic_path

    out = []
    for t in range(len(frames)):
        k = min(int(np.searchsorted(keyframes, t, side="right")), len(keyframes) - 1)  # next keyframe after t
        img = draw_points(frames[t], subgoals_px[k], radius=3, hollow=True, scale=scale)
        img = draw_points(img, tracks_px[t] * scale, radius=2, scale=1)
        out.append(Image.fromarray(img))
    path = Path(path)
    with atomic_path(path) as tmp:
        out[0].save(tmp, format="GIF", save_all=True, append_images=out[1:], duration=int(1000 / fps), loop=0)
    return path


def draw_plan(ax, frame, truth=None, generated=None, image_size: int | None = None, title: str = ""):
    """A first frame with keypoint subgoal paths: ground truth as rings joined by solid lines, the generated plan
    as dots joined by dashed lines; (M+1, K, 2) arrays in normalised units, one colour per keypoint."""
    import numpy as np
    size = image_size or frame.shape[0]
    ax.imshow(frame)
    for plan, ls, ring in ((truth, "-", True), (generated, "--", False)):
        if plan is None:
            continue
        for k in range(plan.shape[1]):
            c = np.array(KEYPOINT_COLORS[k % len(KEYPOINT_COLORS)]) / 255
            p = plan[:, k] * size - 0.5
            ax.plot(p[:, 0], p[:, 1], ls, color=c, lw=1)
            if ring:
                ax.scatter(p[:, 0], p[:, 1], s=30, facecolors="none", edgecolors=[c])
            else:
                ax.scatter(p[:, 0], p[:, 1], s=8, color=[c])
    ax.set_title(title, fontsize=8)
    ax.set_xticks([]), ax.set_yticks([])


def plot_seed_comparison(table, task: str, method: str, ax=None):
    """Per-seed success of the profile and each ablation for one task x method (a ``relam.ablations.compare``
    table): one dot per seed, the mean as a bar, each ablation labelled with its paired difference from the
    profile and that difference's 95 % interval. Where seeds swing 0-100 % a mean alone misleads; the dots show it."""
    rows = table[(table["task"] == task) & (table["method"] == method)].reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"no finished runs of {task} / {method} in the table; its tasks x methods are "
                         f"{sorted(set(zip(table['task'], table['method'])))}")
    if ax is None:
        _, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.2))
    labels = []
    for i, r in rows.iterrows():
        ax.bar(i, r["success %"], color="0.85", width=0.7)
        n = len(r["per seed"])
        ax.scatter(i + np.linspace(-0.25, 0.25, n) * (n > 1), r["per seed"], s=12, zorder=3,
                   color="C0" if r["settings"] == "profile" else "C1")
        diff = r.get("paired diff")
        label = f"{r['settings']}\n{r['success %']:.0f} % ({r['seeds']})"
        if diff is not None and diff == diff:   # not NaN
            lo, hi = r["diff 95 % CI"]
            label += f"\n{diff:+.0f} [{lo:+.0f}, {hi:+.0f}]"
        labels.append(label)
    ax.set_xticks(range(len(rows)), labels, fontsize=7)
    ax.set_ylim(-5, 105)
    ax.set_ylabel("success % (per seed)")
    ax.set_title(f"{task} · {method}", fontsize=9)
    return ax


def _curve_panels(tasks, width: float):
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no task to plot: pass at least one of the profile's PPO or IQL tasks")
    fig, axes = plt.subplots(1, len(tasks), figsize=(width * len(tasks), 3.0), squeeze=False)
    return tasks, fig, axes[0]


def _draw_curve(ax, cur, color: str, label: str, alpha: float) -> None:
    """One ``relam.report.success_curves`` frame: the mean over seeds, its 95 % band, n seeds in the label."""
    ax.plot(cur["step"], cur["mean"], "o-", ms=3, color=color, label=f"{label} (n={cur['seeds'].iloc[0]})")
    ax.fill_between(cur["step"], cur["lo"], cur["hi"], color=color, alpha=alpha)


def _finish_curve_panels(fig, axes, title: str):
    for ax in axes:
        ax.set_ylim(-3, 103)
        if ax.lines:
            ax.legend(fontsize=7)
    axes[0].set_ylabel("success % (simulator)")
    if title:
        fig.suptitle(title, fontsize=10, y=1.03)
    return fig


def plot_curves_by_settings(settings, tasks, method: str = "relam", title: str = ""):
    """Success during training of ``method`` under several settings, one panel per task: the mean over seeds and a
    95 % bootstrap band (``relam.report.success_curves``), as the paper's ablation figures (Fig. 6) show them.
    ``settings``: (label, config) pairs, e.g. the profile's and ablations' (``relam.ablations.ablation_config``);
    each config's results tree is read, leaving out runs made under other settings. Returns the figure."""
    from relam.report import eval_curves, success_curves

    tasks, fig, axes = _curve_panels(tasks, 3.8)
    curves = [(label, eval_curves(cfg.out, cfg)) for label, cfg in settings]   # each results tree read once
    for ax, task in zip(axes, tasks):
        for i, (label, evals) in enumerate(curves):
            cur = success_curves(evals, task).get(method)
            if cur is not None and not cur.empty:
                _draw_curve(ax, cur, f"C{i}", label, 0.15)
        ax.set_title(f"{task} · {method}", fontsize=9)
        ax.set_xlabel("gradient steps" if settings and task in settings[0][1].iql.tasks else "env steps")
    return _finish_curve_panels(fig, axes, title)


def plot_curves_by_method(curves, tasks, cfg, title: str = ""):
    """Success during training of every method with runs, one panel per task (notebook 09's figure): the mean over
    seeds and a 95 % bootstrap band. ``curves``: ``relam.report.eval_curves`` of ``cfg``'s results. A method keeps
    its colour across panels (``relam.report.METHOD_ORDER``). Returns the figure."""
    from relam.report import METHOD_ORDER, success_curves, table4_label

    tasks, fig, axes = _curve_panels(tasks, 3.6)
    for ax, task in zip(axes, tasks):
        for method, cur in success_curves(curves, task).items():
            if not cur.empty:
                color = f"C{METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)}"
                _draw_curve(ax, cur, color, method, 0.2)
        ax.set_title(table4_label(task, cfg.iql.learner), fontsize=9)
        ax.set_xlabel("gradient steps" if task in cfg.iql.tasks else "env steps")
    return _finish_curve_panels(fig, axes, title)


def plot_keypoint_aliases(ax, result: dict, title: str = ""):
    """A ``relam.rl.plan_check.keypoint_aliases`` result on one axes: the probes at the grasp's depth (commanded y
    offset 0), placed where the hand got (x, z in cm from the grasp), coloured by the reward distance d_k to the
    grasp's keypoints (light: small). The grasp is the star; the smallest d_k further than the near radius is
    circled. A dot away from the star as light as those beside it is a hand place the camera cannot tell from the
    grasp."""
    rows = [r for r in result["probes"] if abs(r["offset_cm"][1]) < 1e-6]
    if not rows:
        raise ValueError("no probe at the grasp's depth (offset y = 0) to draw: pass offsets_cm with y = 0 to "
                         "keypoint_aliases")
    xz = np.array([(r["reached_cm"][0], r["reached_cm"][2]) for r in rows])
    art = ax.scatter(xz[:, 0], xz[:, 1], c=[r["d_px"] for r in rows], cmap="viridis_r", s=60, edgecolors="none")
    ax.scatter([0], [0], marker="*", s=160, color="red", label="grasp")
    if result.get("far_min_at_cm") is not None:
        x, _, z = result["far_min_at_cm"]
        ax.scatter([x], [z], s=220, facecolors="none", edgecolors="red",
                   label=f"far min {result['far_min_px']:.1f} px (near {result['near_min_px']:.1f})")
    ax.figure.colorbar(art, ax=ax, label="d_k to the grasp (px)")
    ax.set_xlabel("hand x from the grasp (cm)")
    ax.set_ylabel("hand z from the grasp (cm)")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(title, fontsize=9)
    return ax
