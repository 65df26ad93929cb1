"""Held-out errors of finished anticipation models on UNSEEN demos: expert demos from reset seeds that no stage
trained on (``demos.unseen_seed_offset`` on), extracted with each task's own perception settings.

Why: at ``cpu`` a model holds out 5 of its task's 50 demos (``val_fraction`` 0.1), and 5 demos give a noisy error.
Door-open's model read 2.7 / 5.0 px (x^0 / plan) on its 5 held-out demos and 6.1 / 8.8 px on 50 unseen ones
(2026-12-05; README, stage 04). The generated-plan threshold (``reward.delta_generated: model``) reads the 5-demo number
(``held_out_plan_error``). Notebook 04 reports both.

The unseen demos live in ``results/<profile>/unseen_demos/{demos,subgoals}/`` and are collected once, like the
training demos (a rerun with the same settings skips them).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch

from relam.models.anticipation import check_num_keypoints
from relam.models.train_anticipation import (Features, Sample, evaluate, goals_from_simulator, load_model,
                                             load_samples, mean_x0_error)


def unseen_config(cfg):
    """A copy of ``cfg`` whose demos are the unseen ones: ``demos.unseen`` of them, from ``demos.unseen_seed_offset``,
    under ``<out>/unseen_demos``."""
    if cfg.demos.unseen < 1:
        raise ValueError(f"demos.unseen is {cfg.demos.unseen}: set it to the number of unseen demos per task to "
                         "collect (the cpu profile uses 50)")
    out = copy.deepcopy(cfg)
    out.results_dir = str(cfg.out / "unseen_demos")
    out.demos.n_demos, out.demos.seed_offset = cfg.demos.unseen, cfg.demos.unseen_seed_offset
    out.demos.task_overrides = {}   # a task's own number of training demos is not its number of unseen ones
    return out


def collect_unseen(cfg, task: str, progress: bool = True):
    """Collect (or reuse) ``task``'s unseen demos and their subgoal data; returns its ``SubgoalDataset``."""
    from relam.data.demos import collect_demos
    from relam.perception.subgoals import SubgoalDataset, build_subgoal_dataset, robot_reference_of, subgoal_path

    ucfg = unseen_config(cfg)
    collect_demos(ucfg, task, progress)
    # the arm points the model learnt are the training demos' (keypoints.robot_reference), not a medoid of these
    ref = robot_reference_of(subgoal_path(cfg.out, task)) \
        if cfg.perception.for_task(task).keypoints.robot_reference else None
    build_subgoal_dataset(ucfg, task, progress, robot_reference=ref)
    return SubgoalDataset.load(subgoal_path(ucfg.out, task), task)


@torch.no_grad()
def errors_on_demos(run_dir: Path | str, ds, indices=None, train_ds=None) -> dict:
    """Held-out metrics (``train_anticipation.evaluate``: x0_px, subgoal_px, len_err, x1_px, x1_max_px) of the finished
    model in ``run_dir`` on demos ``indices`` (default: all) of subgoal dataset ``ds``, planned as the run planned
    its own held-out demos: the task-indication frame and goal statistics of the run, the demo's own goal, with
    ``x0_px_per_keypoint`` (K,); given the task's training dataset ``train_ds``, ``x0_px_mean``: the error of
    always answering the mean x^0 of the demos the run trained on (its split). A keypoint whose error is no better
    than that mean's is one the model does not read from the first frame (PickCube's cube, 2026-12-04 model:
    11.3 px on 50 unseen demos against the mean's 11.5)."""
    model, ckpt = load_model(Path(run_dir) / "checkpoint.pt")
    tasks = list(ckpt["tasks"])
    if ds.task not in tasks:
        raise ValueError(f"the model in {run_dir} was trained on {tasks}, not on {ds.task!r}: pass a run of that task")
    check_num_keypoints(model.cfg.num_keypoints, ds.num_keypoints)
    if train_ds is not None and train_ds.task != ds.task:
        raise ValueError(f"train_ds is {train_ds.task!r}'s subgoal dataset, the demos are {ds.task!r}'s")
    idx = range(len(ds.subgoals)) if indices is None else list(indices)
    size = ckpt["task_frames"].shape[1]
    if model.cfg.goal_input:
        goals_from_simulator({ds.task: ds}, size)
    samples = [Sample(ds.task, ds.first_frames[i], tasks.index(ds.task), ds.subgoals[i],
                      None if ds.goals is None else np.asarray(ds.goals[i], np.float32)) for i in idx]
    if not samples:
        raise ValueError("no demos to evaluate on")
    out = evaluate(model, Features(model, np.asarray(ckpt["task_frames"]), None), samples, size)
    out.pop("per_task")
    if train_ds is not None:
        split = ckpt["config"]
        train_s = load_samples({ds.task: train_ds}, split["val_fraction"], split["seed"])[0]
        out["x0_px_mean"] = float(mean_x0_error(train_s, samples, ds.task, size).mean())
    return {**out, "n": len(samples), "seeds": [int(ds.seeds[i]) for i in idx]}


def unseen_error_rows(cfg, metrics: dict, progress: bool = True) -> list[dict]:
    """One row per finished run and task of ``metrics`` (``train_profile``'s {run: metrics}): its errors on the split's
    held-out demos beside those on the task's unseen demos, which are collected once per task and shared by the runs
    that plan for it (a per-task model and the multi-task one). Empty when ``demos.unseen`` is 0."""
    if not cfg.demos.unseen:
        return []
    from relam.perception.subgoals import SubgoalDataset, subgoal_path

    unseen, trained, rows = {}, {}, []
    for name, m in metrics.items():
        for task in m["tasks"]:
            if task not in unseen:
                unseen[task] = collect_unseen(cfg, task, progress)
                trained[task] = SubgoalDataset.load(subgoal_path(cfg.out, task), task)
            e = errors_on_demos(cfg.out / "anticipation" / name, unseen[task], train_ds=trained[task])
            v = m["val"]["per_task"][task]
            rows.append({"run": name, "task": task, "x0 px, split": v["x0_px"], "x0 px, unseen": e["x0_px"],
                         # the training mean x0's error, and the model's per keypoint: which keypoints it reads
                         "x0 px, unseen, mean x0": e["x0_px_mean"],
                         "x0 px per keypoint, unseen": [round(x, 1) for x in e["x0_px_per_keypoint"]],
                         "subgoal px, split": v["subgoal_px"], "subgoal px, unseen": e["subgoal_px"],
                         "x1 max px, unseen": e["x1_max_px"], "n_val": m["n_val"], "n unseen": e["n"]})
    return rows
