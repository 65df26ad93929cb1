"""Training and evaluation of the anticipation model (SPEC §4).

One run = one model (a task, or ``multitask`` over several tasks: the task-indication frame tells them
apart). A run directory ``results/<profile>/anticipation/<name>/`` holds ``config.json``, ``log.csv``
(train losses and validation metrics), ``checkpoint.pt`` (written atomically every ``checkpoint_every``
steps; a rerun resumes from it) and ``metrics.json`` (held-out errors in pixels) when finished.

Metrics on held-out demos (SPEC §4), in pixels at the stored image size:
- ``x0_px``: mean keypoint distance of the predicted x^0 to the true one;
- ``subgoal_px``: generated (NOT teacher-forced) plans against the true keyframes: both sequences are padded
  to the longer length by repeating their last subgoal (so stopping early or late costs), then the mean
  keypoint distance over all steps;
- ``len_err``: mean |generated M - true M|;
- ``x1_px`` / ``x1_max_px``: the first generated subgoal against the true one (padded as above), the mean and the
  LARGEST keypoint distance. Why: the first subgoal gates every later stage, and the 'max' stage criterion tests
  each keypoint against delta, so a plan whose mean error is small can still be unreachable there (PickCube,
  2026-12-03: ``subgoal_px`` 6.1 px, but x^1 ~10 px per robot keypoint on training demos, README stage 06).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from relam.io import atomic_path, atomic_write_text, without_options_off
from relam.models.anticipation import AnticipationModel, AnticipationModelConfig, check_num_keypoints
from relam.models.encoders import FeatureCache


@dataclass
class AnticipationConfig:
    model: AnticipationModelConfig = field(default_factory=AnticipationModelConfig)
    batch_size: int = 8
    """Paper: 8."""
    lr: float = 1e-4
    """AdamW learning rate with cosine decay (ours; the paper's value was lost)."""
    weight_decay: float = 0.01
    """AdamW weight decay (ours)."""
    warmup_steps: int = 100
    """Linear warm-up before the cosine decay (ours)."""
    train_steps: int = 20000
    """Optimiser steps per run."""
    shift_augment: int = 0
    """Random translation of each training first frame by up to this many pixels, with its subgoals moved by the
    same amount (ours; 0: off). With ~45 demos per task a from-scratch encoder memorises them instead of learning
    where objects are; a shifted scene must give the shifted plan, which teaches exactly that. Trainable (CNN)
    encoders only: a frozen encoder's features are cached per image."""
    stop_weight: float = 1.0
    """Weight of the stop-logit BCE against the coordinate MSE (ours)."""
    x0_warmup_steps: int = 0
    """Train on the x^0 error alone for this many first steps (ours; 0: off). See ``split_x0_loss``."""
    split_x0_loss: bool = False
    """Coordinate loss = MSE of x^0 + MSE of the later subgoals, each its own mean (ours; False: one mean over
    all subgoals, where x^0 is 1 of ~10 terms). Measured on PushCube (45 demos, d 256, 4 layers, lr 1e-3, first-
    frame read-out, CoordConv + 16 point tokens): under the one-mean loss from step 0 the cube keypoint's x^0
    error stayed at the spread of cube positions (12 px on training demos, = predicting the mean); x^0 alone
    brought it to 1.8 px in 450 steps (at lr 3e-4: still 12 px); switching to the one-mean loss after 400 such
    steps lost it again (8.7 px at 1050 steps), the split loss kept it (4.1 px) and fitted the later subgoals 3.5x
    better (teacher-forced MSE 0.0042 vs 0.0149). That was on ``near-object`` keypoints. On the profile's ``fps``
    keypoints (robot keypoints on different arm parts in different demos, errors 15-17 px that no model can
    remove) the same recipe did not learn the cube's x^0 in 400 warm-up steps (11.8 vs 12.0 px) and the full
    2000-step ``cpu`` runs stayed at the mean baseline (held-out x^0 PushCube 7.3 vs 7.2 px, PickCube 12.2 vs
    11.3): off by default. Full 2000-step ``cpu`` runs on ``near-object`` keypoints (the ``kp-near-object-readout``
    ablation, README) kept part of it: cube x^0 on the training demos PushCube 5.8 px (mean 12.0), but PickCube
    11.2 (mean 11.0), and their generated plans were no better (held out: 7.3 / 17.4 px vs 4.7 / 15.0 without)."""
    x0_weight: float = 1.0
    """Weight of the x^0 term in ``split_x0_loss`` (ours; 1.0: the split loss as it was). Why: PickCube's model
    (the ``cpu`` settings since 2026-12-04) does not read its cube from the first frame: the cube keypoint's x^0 is
    10.9 px off on its own training demos and 11.3 on 50 unseen ones, where always answering the training mean
    x^0 is 11.5. A 500-step run on x^0 alone (``x0_warmup_steps`` 450) read it (3.5 px unseen): the network can.
    Under the whole loss the later subgoals outweigh it. Measured 2026-12-07 (PickCube, ``x0_warmup_steps`` 450,
    4 000 steps, the profile otherwise; x^0 / plan px on the 5 held-out demos, then on 50 unseen demos, then the
    cube's x^0 on the unseen demos): weight 1: 5.54 / 5.12, 6.45 / 6.48, 10.4 (a warm-up alone does not last);
    weight 10: 3.76 / 4.14, 3.60 / 3.69, 2.9; weight 30: 3.23 / 3.52, 3.56 / 3.94, 2.7. The profile's model before:
    4.48 / 4.58, 6.20 / 6.61, 11.3. PickCube's ``cpu`` setting since 2026-12-07 (weight 30), with its plans anchored by
    ``perception.x0_anchor: residual``: under 'centroid' its offline ``relam`` policies did worse (MC-AWR, 6 seeds,
    Table 4's 10 states / 50 states: 90.0 / 84.7 -> 78.3 / 82.3 %), under 'residual' better (100.0 / 93.7)."""
    linear_init: bool = False
    """Start ``model.coord_skip``'s per-step maps (and ``model.goal_input``'s, where on) at the least-squares fit of
    the training plans: x^{j+1} - x^j on [x^j - 0.5, standardised goal, 1], ridge 1e-3, per plan step with at least 8
    training plans that long (ours; needs ``coord_skip``). The transformer then learns only what the linear fit
    leaves. Why: with ``coord_skip`` and ``goal_input`` trained from zero, PickCube's grasp subgoal x^1 stayed ~7 px
    off the expert's for the gripper's keypoints (least squares on x^0 alone: 2.3 px), and half of the failures of
    the ``relam`` policies planned with it never grasped the cube (README stage 06)."""
    val_fraction: float = 0.1
    """Share of each task's demos held out for the metrics (at least 1 demo)."""
    eval_every: int = 1000
    """Validation metrics every this many steps (and at the end)."""
    checkpoint_every: int = 500
    """Atomic checkpoint every this many steps; a rerun resumes from the last one."""
    per_task: bool = True
    """Train one model per task of the profile."""
    multitask: bool = True
    """Also train one model over all tasks of the profile."""
    seed: int = 0
    """Seeds the split, initialisation and batch order."""
    task_overrides: dict = field(default_factory=dict)
    """{task: overrides of this section} for that task's OWN model (``per_task``), e.g. ``{PickCube: {lr: 0.001,
    model: {readout: true}}}`` (ours). The multi-task model ignores them. Why per task: Meta-World's models met
    SPEC §4's targets with the plain settings, while PickCube's random goal (the green sphere) needs the options
    that make the model read positions (``for_task``; measured in the ``cpu`` profile's comments)."""
    multitask_overrides: dict = field(default_factory=dict)
    """Overrides of this section for the multi-task model only (ours), e.g. ``{train_steps: 10000}``. Why: one
    model shares its steps among the tasks, so at the per-task models' 2000 steps it is under-trained (measured in
    the ``cpu`` profile's comments). The per-task models ignore them."""

    def __post_init__(self):
        from relam.config import check_task_overrides
        check_task_overrides(self, "anticipation")
        if not isinstance(self.multitask_overrides, dict) or {"task_overrides", "multitask_overrides"} \
                & set(self.multitask_overrides):
            raise ValueError("anticipation.multitask_overrides must be a mapping of anticipation settings (not "
                             f"task_overrides or itself), got {self.multitask_overrides!r}")
        self.for_task(None)   # unknown keys fail at load time
        if self.linear_init and not self.model.coord_skip:
            raise ValueError("anticipation.linear_init starts model.coord_skip's linear maps at a least-squares fit: "
                             "set anticipation.model.coord_skip: true as well (or linear_init: false)")
        if not self.x0_weight > 0:
            raise ValueError(f"anticipation.x0_weight must be > 0, got {self.x0_weight}")
        if self.x0_weight != 1.0 and not self.split_x0_loss:
            raise ValueError("anticipation.x0_weight weighs the x^0 term of the split loss: set "
                             "anticipation.split_x0_loss: true as well (or x0_weight: 1.0)")

    def for_task(self, task: str | None) -> "AnticipationConfig":
        """The settings of ``task``'s own model: this section with ``task_overrides[task]`` applied, and no
        per-task overrides left (so a model's config.json only holds what it was trained with). ``None``: the
        multi-task model's, with ``multitask_overrides`` applied."""
        from relam.config import section_for_task, section_with
        base = copy.copy(self)   # a per-model section holds no multi-task overrides (its checks would recurse)
        base.multitask_overrides = {}
        return section_for_task(base, task, "anticipation") if task else \
            section_with(base, self.multitask_overrides, "anticipation.multitask_overrides.")


@dataclass
class Sample:
    task: str
    first_frame: np.ndarray   # (H, W, 3) uint8
    task_index: int           # index into the task-frame table
    subgoals: np.ndarray      # (M+1, K, 2) normalised
    goal: np.ndarray | None = None   # (GOAL_DIM,) the task's goal (model.goal_input), see ``goals_from_simulator``


def load_samples(datasets: dict, val_fraction: float, seed: int):
    """datasets: {task: SubgoalDataset}. Returns (train, val, task_frames (T, H, W, 3), task_names). Samples carry
    the datasets' goals where they have them (``goals_from_simulator``)."""
    train, val, frames = [], [], []
    for ti, (task, ds) in enumerate(datasets.items()):
        frames.append(ds.task_frame)
        n = len(ds.subgoals)
        order = np.random.default_rng(seed).permutation(n)
        n_val = max(1, int(round(val_fraction * n))) if n > 1 else 0
        held = set(order[:n_val].tolist())
        for i in range(n):
            goal = None if ds.goals is None else np.asarray(ds.goals[i], np.float32)
            (val if i in held else train).append(Sample(task, ds.first_frames[i], ti, ds.subgoals[i], goal))
    return train, val, np.stack(frames), list(datasets)


class Features:
    """Encoder features for samples: frozen encoders are looked up in a disk cache (computed once); trainable
    ones (the CNN) run in the graph."""

    def __init__(self, model: AnticipationModel, task_frames: np.ndarray, cache_path: Path | None):
        self.model, self.task_frames = model, torch.from_numpy(task_frames)
        self.frozen = not getattr(model.encoder, "trainable", True)
        self.cache = FeatureCache(cache_path, model.encoder) if self.frozen and cache_path else None

    def __call__(self, samples) -> torch.Tensor:
        first = np.stack([s.first_frame for s in samples])
        task = self.task_frames[[s.task_index for s in samples]]
        if self.cache is not None:
            return torch.stack([self.cache.encode(first), self.cache.encode(task.numpy())], 1)
        return self.model.encode_images(torch.from_numpy(first), task)


def goals_from_simulator(datasets: dict, image_size: int) -> dict:
    """Give each subgoal dataset without goals the goal of each demo's initial state (``SimGoal``, by the demo's
    task seed), for ``model.goal_input``; in place, returns ``datasets``."""
    from relam.rl.planners import SimGoal
    for task, ds in datasets.items():
        if ds.goals is None:
            sim = SimGoal(task, image_size)
            try:
                ds.goals = np.stack([sim(None, {"task_seed": int(seed)}) for seed in ds.seeds]).astype(np.float32)
            finally:
                sim.close()
    return datasets


@torch.no_grad()
def least_squares_init(model: AnticipationModel, samples, ridge: float = 1e-3, min_plans: int = 8) -> list[float]:
    """``AnticipationConfig.linear_init``: set each plan step's ``coord_skip`` map (and ``goal_input`` map) to the
    ridge least-squares fit of x^{j+1} - x^j on [x^j - 0.5, standardised goal, 1] over ``samples``; the goal's
    statistics must be set first. Returns the fit's mean keypoint residual per step (normalised units)."""
    if not model.cfg.coord_skip:
        raise ValueError("least_squares_init needs a model with coord_skip")
    k2 = 2 * model.cfg.num_keypoints
    goals = batch_goals(samples, model)
    goals = model.standardised_goal(goals, len(samples)).numpy() if goals is not None else np.zeros((len(samples), 0))
    residuals = []
    for j in range(model.cfg.max_subgoals - 1):
        idx = [i for i, s in enumerate(samples) if len(s.subgoals) > j + 1]
        if len(idx) < min_plans:
            break
        prev = np.stack([samples[i].subgoals[j].ravel() for i in idx]).astype(np.float64)
        nxt = np.stack([samples[i].subgoals[j + 1].ravel() for i in idx]).astype(np.float64)
        a = np.c_[prev - 0.5, goals[idx], np.ones(len(idx))]
        w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (nxt - prev))
        model.skip_weight[j] = torch.from_numpy(w[:k2].T.copy()).float()
        model.skip_bias[j] = torch.from_numpy(w[-1].copy()).float()
        if model.cfg.goal_input:
            model.goal_weight[j] = torch.from_numpy(w[k2:-1].T.copy()).float()
            model.goal_bias[j] = 0.0
        residuals.append(float(np.linalg.norm((a @ w - (nxt - prev)).reshape(len(idx), -1, 2), axis=-1).mean()))
    return residuals


def batch_goals(samples, model: AnticipationModel):
    """(B, GOAL_DIM) goals of the samples for a ``goal_input`` model, else None."""
    if not model.cfg.goal_input:
        return None
    if any(s.goal is None for s in samples):
        raise ValueError("the model reads the task's goal (anticipation.model.goal_input) but the subgoal dataset "
                         "has none: attach them with relam.models.train_anticipation.goals_from_simulator")
    return torch.from_numpy(np.stack([s.goal for s in samples]).astype(np.float32))


def shift_samples(samples, max_shift: int, rng: np.random.Generator, image_size: int):
    """Translate each first frame by a random integer (dx, dy) in [-max_shift, max_shift] (edge pixels fill the
    gap) and its subgoals -- and the goal's pixel, where there is one -- by the same amount; the task-indication
    frame is left alone."""
    out = []
    for s in samples:
        dx, dy = (int(v) for v in rng.integers(-max_shift, max_shift + 1, 2))
        h, w = s.first_frame.shape[:2]
        m = max_shift
        padded = np.pad(s.first_frame, ((m, m), (m, m), (0, 0)), mode="edge")
        frame = padded[m - dy:m - dy + h, m - dx:m - dx + w]
        move = np.array([dx, dy], np.float32) / image_size
        goal = None if s.goal is None else np.concatenate([s.goal[:2] + move, s.goal[2:]]).astype(np.float32)
        out.append(Sample(s.task, np.ascontiguousarray(frame), s.task_index, (s.subgoals + move).astype(np.float32),
                          goal))
    return out


def batch_targets(samples, max_len: int):
    """Pad subgoal sequences to the batch's longest: (B, L, K, 2), valid mask (B, L), stop targets (B, L-1)."""
    lengths = [len(s.subgoals) for s in samples]
    if max(lengths) > max_len:
        raise ValueError(f"a demo has {max(lengths)} subgoals but the model's max_subgoals is {max_len}; "
                         "raise anticipation.model.max_subgoals or the keyframe gaps")
    L, K = max(lengths), samples[0].subgoals.shape[1]
    goals = np.zeros((len(samples), L, K, 2), np.float32)
    valid = np.zeros((len(samples), L), bool)
    stop = np.zeros((len(samples), L - 1), np.float32)
    for i, s in enumerate(samples):
        n = len(s.subgoals)
        goals[i, :n], goals[i, n:] = s.subgoals, s.subgoals[-1]
        valid[i, :n] = True
        stop[i, n - 2] = 1.0
    return torch.from_numpy(goals), torch.from_numpy(valid), torch.from_numpy(stop)


def loss_fn(model, feats, samples, stop_weight: float, x0_only: bool = False, split_x0: bool = False,
            x0_weight: float = 1.0):
    """(loss, coordinate MSE, stop BCE); see AnticipationConfig.x0_warmup_steps and split_x0_loss."""
    goals, valid, stop_t = batch_targets(samples, model.cfg.max_subgoals)
    pred, stop_logit = model(feats, goals, batch_goals(samples, model))
    se = ((pred - goals) ** 2).mean(dim=(2, 3))                              # (B, L)
    if x0_only:
        mse = se[:, 0].mean()
        return mse, mse.item(), float("nan")
    if split_x0:
        mse = x0_weight * se[:, 0].mean() + se[:, 1:][valid[:, 1:]].mean()
    else:
        mse = se[valid].mean()
    stop_valid = valid[:, 1:]
    bce = F.binary_cross_entropy_with_logits(stop_logit[stop_valid], stop_t[stop_valid])
    return mse + stop_weight * bce, mse.item(), bce.item()


def plan_errors(plans, truths, image_size: int) -> dict:
    x0, sub, lens, x1, x1_max = [], [], [], [], []
    for p, t in zip(plans, truths):
        x0.append(np.linalg.norm(p[0] - t[0], axis=-1) * image_size)          # (K,)
        L = max(len(p), len(t), 2)
        pp = np.concatenate([p, np.repeat(p[-1:], L - len(p), 0)])
        tt = np.concatenate([t, np.repeat(t[-1:], L - len(t), 0)])
        dist = np.linalg.norm(pp - tt, axis=-1) * image_size                  # (L, K)
        sub.append(dist[:max(len(p), len(t))].mean())
        x1.append(dist[1].mean())
        x1_max.append(dist[1].max())
        lens.append(abs(len(p) - len(t)))
    return {"x0_px": float(np.mean(x0)), "subgoal_px": float(np.mean(sub)), "len_err": float(np.mean(lens)),
            "x1_px": float(np.mean(x1)), "x1_max_px": float(np.mean(x1_max)),
            # which keypoints the model reads: compare with the training mean x^0's (``mean_x0_error``)
            "x0_px_per_keypoint": np.mean(x0, 0).tolist()}


@torch.no_grad()
def evaluate(model, features: Features, samples, image_size: int, batch: int = 16) -> dict:
    model.eval()
    plans = []
    for s in range(0, len(samples), batch):
        chunk = samples[s:s + batch]
        plans.extend(model.generate(features(chunk), goal=batch_goals(chunk, model)))
    model.train()
    out = plan_errors(plans, [s.subgoals for s in samples], image_size)
    out["per_task"] = {}
    for task in sorted({s.task for s in samples}):
        idx = [i for i, s in enumerate(samples) if s.task == task]
        out["per_task"][task] = plan_errors([plans[i] for i in idx], [samples[i].subgoals for i in idx], image_size)
    return out


def mean_x0_baseline(datasets: dict, cfg: AnticipationConfig, image_size: int) -> dict:
    """{task: held-out x^0 error (px) of always predicting the TRAINING mean x^0}, on the split ``train`` uses.
    A model whose x^0 error is no better than this has not learned to read positions from the first frame."""
    train_s, val_s, _, _ = load_samples(datasets, cfg.val_fraction, cfg.seed)
    return {task: float(err.mean()) for task in datasets
            if (err := mean_x0_error(train_s, val_s, task, image_size)) is not None}


def mean_x0_error(train_s, samples, task: str, image_size: int) -> np.ndarray | None:
    """Per-keypoint x^0 error (px) on ``task``'s ``samples`` of always answering its training mean x^0 (None
    when either side has no demo of the task)."""
    tr = [s.subgoals[0] for s in train_s if s.task == task]
    truth = [s.subgoals[0] for s in samples if s.task == task]
    if not tr or not truth:
        return None
    return np.linalg.norm(np.mean(tr, 0) - np.stack(truth), axis=-1).mean(0) * image_size


def _lr(step: int, cfg: AnticipationConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.train_steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def save_checkpoint(path: Path, model, opt, step: int, cfg: AnticipationConfig, extra: dict | None = None):
    with atomic_path(path) as tmp:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict() if opt else None, "step": step,
                    "config": asdict(cfg), **(extra or {})}, tmp)


def held_out_plan_error(run_dir: Path | str, task: str, image_size: int) -> float | None:
    """Mean pixel error of a finished run's generated subgoals on its held-out demos of ``task``
    (``metrics.json``), in normalised units; None when the run has no metrics (unfinished) or none for ``task``."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return None
    metrics = json.loads(path.read_text())
    val = metrics.get("val", {})
    entry = val.get("per_task", {}).get(task) or (val if metrics.get("tasks") == [task] else None)
    return None if not entry or entry.get("subgoal_px") is None else float(entry["subgoal_px"]) / image_size


def load_model(path: Path | str, encoder=None) -> tuple[AnticipationModel, dict]:
    """Rebuild a trained model from its checkpoint (for planning at RL time)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    # checkpoints written before these options hold the plain CNN without read-out
    old = {"cnn_coords": False, "cnn_points": 0, "readout": False}
    mcfg = AnticipationModelConfig(**{**old, **ckpt["config"]["model"]})
    model = AnticipationModel(mcfg, encoder=encoder)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, ckpt


# Options added after ``cpu`` results existed, with the value that reproduces the behaviour before them. While an
# option has that value it is left out of config.json, so adding it does not make every finished model -- and,
# through the model's fingerprint, every RL run planned with it -- look stale.
OPTIONS_ADDED_OFF = {("model", "readout"): False, ("model", "coord_skip"): False, ("model", "goal_input"): False,
                     ("x0_warmup_steps",): 0, ("linear_init",): False,
                     ("split_x0_loss",): False, ("x0_weight",): 1.0, ("task_overrides",): {},
                     ("multitask_overrides",): {}}


# The options with which the model learned to read the cube's position (see split_x0_loss), as config overrides of
# the ``anticipation`` section: the ``kp-near-object-readout`` ablation (notebook 08) and the latency benchmark.
IMAGE_READING_OPTIONS = {"lr": 1e-3, "x0_warmup_steps": 400, "split_x0_loss": True,
                         "model": {"readout": True, "cnn_coords": True, "cnn_points": 16}}


def run_config_json(cfg: AnticipationConfig, data: dict) -> str:
    """The text of a run's config.json: the config (less options at their 'off' value) and its data settings."""
    return json.dumps(without_options_off({**asdict(cfg), "data": data}, OPTIONS_ADDED_OFF), indent=2)


# Profile switches that choose WHICH runs ``train_profile`` trains, not how one trains: a run's config.json records
# them, but a model trained with the multi-task run on or off is the same model, so they must not retrain it.
RUN_SELECTION_KEYS = ("per_task", "multitask")


def same_run_config(saved_json: str, cfg_json: str) -> bool:
    """Whether a finished or checkpointed run's config.json text describes the run ``cfg_json`` asks for."""
    if saved_json == cfg_json:
        return True
    drop = lambda text: {k: v for k, v in json.loads(text).items() if k not in RUN_SELECTION_KEYS}   # noqa: E731
    return drop(saved_json) == drop(cfg_json)


def train(run_dir: Path, datasets: dict, cfg: AnticipationConfig, image_size: int, progress: bool = True,
          threads: int = 1) -> dict:
    """Train (or resume, or skip if finished) one anticipation model on ``datasets`` ({task: SubgoalDataset})."""
    torch.set_num_threads(threads)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # what the model was trained on is part of the run: a subgoal dataset rebuilt under other keypoint/keyframe
    # settings must retrain it (and, through the fingerprint of this file, make RL runs that use it stale)
    data = {task: ds.settings for task, ds in datasets.items()}
    cfg_json = run_config_json(cfg, data)
    metrics_path, ckpt_path, log_path = run_dir / "metrics.json", run_dir / "checkpoint.pt", run_dir / "log.csv"
    if metrics_path.exists() and (run_dir / "config.json").exists() \
            and same_run_config((run_dir / "config.json").read_text(), cfg_json):
        # config.json stays as it is: its bytes are the fingerprint the RL runs planned with this model hold
        return json.loads(metrics_path.read_text()) | {"skipped": True}
    for ds in datasets.values():
        check_num_keypoints(cfg.model.num_keypoints, ds.num_keypoints)
    torch.manual_seed(cfg.seed)
    if cfg.model.goal_input:
        goals_from_simulator(datasets, image_size)
    train_s, val_s, task_frames, tasks = load_samples(datasets, cfg.val_fraction, cfg.seed)
    model = AnticipationModel(cfg.model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    step = 0
    if ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        # rebuilt through the dataclasses so that options the checkpoint predates take their defaults
        saved = AnticipationConfig(**{**ckpt["config"], "model": AnticipationModelConfig(**ckpt["config"]["model"])})
        if same_run_config(run_config_json(saved, ckpt.get("data")), cfg_json):
            model.load_state_dict(ckpt["model"])
            opt.load_state_dict(ckpt["optimizer"])
            step = ckpt["step"]
        else:
            ckpt_path.unlink()  # another configuration's checkpoint: start over
    if step == 0:   # a fresh start; a resumed checkpoint holds the goal statistics and the trained linear maps
        if cfg.model.goal_input:
            model.set_goal_statistics(batch_goals(train_s, model))
        if cfg.linear_init:
            least_squares_init(model, train_s)
        log_path.unlink(missing_ok=True)
    # metrics of an earlier configuration must go before this config.json is written: an interrupted retrain
    # would otherwise look finished (metrics + matching config) and be skipped with the old model's numbers
    metrics_path.unlink(missing_ok=True)
    atomic_write_text(run_dir / "config.json", cfg_json)
    features = Features(model, task_frames, run_dir / "features.npz")
    new_log = not log_path.exists()
    t0 = time.perf_counter()
    with open(log_path, "a", newline="") as fh, tqdm(total=cfg.train_steps, initial=step, disable=not progress,
                                                    desc=f"anticipation {run_dir.name}") as bar:
        log = csv.writer(fh)
        if new_log:
            log.writerow(["step", "loss", "mse", "bce", "lr", "val_x0_px", "val_subgoal_px", "val_len_err"])
        model.train()
        last_eval = None
        while step < cfg.train_steps:
            rng = np.random.default_rng(cfg.seed * 1_000_003 + step)  # batch order reproducible across resumes
            batch = [train_s[i] for i in rng.integers(0, len(train_s), cfg.batch_size)]
            if cfg.shift_augment and not features.frozen:   # a frozen encoder's cached features cannot be shifted
                batch = shift_samples(batch, cfg.shift_augment, rng, image_size)
            lr = _lr(step, cfg)
            for g in opt.param_groups:
                g["lr"] = lr
            loss, mse, bce = loss_fn(model, features(batch), batch, cfg.stop_weight,
                                     x0_only=step < cfg.x0_warmup_steps, split_x0=cfg.split_x0_loss,
                                     x0_weight=cfg.x0_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            bar.update()
            row = [step, f"{loss.item():.5f}", f"{mse:.6f}", f"{bce:.5f}", f"{lr:.2e}", "", "", ""]
            if step % cfg.eval_every == 0 or step == cfg.train_steps:
                last_eval = evaluate(model, features, val_s, image_size)
                row[5:] = [f"{last_eval['x0_px']:.3f}", f"{last_eval['subgoal_px']:.3f}", f"{last_eval['len_err']:.3f}"]
                bar.set_postfix(x0=f"{last_eval['x0_px']:.1f}px", sub=f"{last_eval['subgoal_px']:.1f}px")
            log.writerow(row)
            if step % cfg.checkpoint_every == 0 or step == cfg.train_steps:
                fh.flush()
                save_checkpoint(ckpt_path, model, opt, step, cfg,
                                {"tasks": tasks, "task_frames": task_frames, "data": data})
                if features.cache is not None:
                    features.cache.save()
    train_eval = evaluate(model, features, train_s[: max(len(val_s), 8)], image_size)
    metrics = {"tasks": tasks, "train_steps": cfg.train_steps, "n_train": len(train_s), "n_val": len(val_s),
               "seconds_this_session": round(time.perf_counter() - t0, 1), "val": last_eval, "train": train_eval,
               "encoder": cfg.model.encoder, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    atomic_write_text(metrics_path, json.dumps(metrics, indent=2))
    return metrics


def train_profile(cfg, progress: bool = True) -> dict:
    """Train the runs a profile asks for: one per task (``per_task``) and one over all (``multitask``)."""
    from relam.config import multitask_tasks
    from relam.perception.subgoals import SubgoalDataset, subgoal_path

    ac = cfg.anticipation
    datasets = {t: SubgoalDataset.load(subgoal_path(cfg.out, t), t) for t in cfg.env.tasks}
    runs = {}
    if ac.per_task:
        for t, ds in datasets.items():
            runs[t] = ({t: ds}, ac.for_task(t))
    shared = {t: datasets[t] for t in multitask_tasks(cfg)}
    if ac.multitask and len(datasets) > len(shared):
        print(f"multi-task model: leaves out {sorted(set(datasets) - set(shared))}, whose keypoint count differs from "
              f"the profile's K = {ac.model.num_keypoints} (perception.task_overrides)")
    if ac.multitask and len(shared) > 1:
        runs["multitask"] = (shared, ac.for_task(None))
    return {name: train(cfg.out / "anticipation" / name, ds, c, cfg.env.image_size, progress, cfg.torch_threads)
            for name, (ds, c) in runs.items()}


def x0_error_by_keypoint(run_dir: Path, datasets: dict, image_size: int) -> dict:
    """{task: {split: per-keypoint x^0 error (px) of the run's model, split + " mean": of the training mean}} for
    the ``train`` and ``val`` demos of the split ``train`` used. Where the model beats the mean on a keypoint it
    reads that keypoint's position from the first frame; the training demos (45 per task at ``cpu``) say so
    with less noise than the 5 held-out ones."""
    model, train_s, val_s, feats = _finished_run(run_dir, datasets)
    out = {}
    for task in datasets:
        row = {}
        for split, samples in (("train", train_s), ("val", val_s)):
            mine = [s for s in samples if s.task == task]
            if not mine:
                continue
            x0 = np.concatenate([model.generate(feats(chunk), max_len=1, goal=batch_goals(chunk, model))
                                 for chunk in (mine[i:i + 16] for i in range(0, len(mine), 16))])
            truth = np.stack([s.subgoals[0] for s in mine])
            row[split] = (np.linalg.norm(x0[:, 0] - truth, axis=-1).mean(0) * image_size).tolist()
            row[split + " mean"] = mean_x0_error(train_s, mine, task, image_size).tolist()
        out[task] = row
    return out


def _finished_run(run_dir: Path, datasets: dict):
    """(model, train samples, held-out samples, Features) of a finished run, split as ``train`` split them: with
    the split settings saved in its checkpoint, so the caller cannot pass a config that splits otherwise (a
    per-task override, another profile)."""
    model, ckpt = load_model(Path(run_dir) / "checkpoint.pt")
    if model.cfg.goal_input:
        goals_from_simulator(datasets, ckpt["task_frames"].shape[1])
    split = ckpt["config"]
    train_s, val_s, task_frames, _ = load_samples(datasets, split["val_fraction"], split["seed"])
    return model, train_s, val_s, Features(model, task_frames, Path(run_dir) / "features.npz")


def heldout_plans(run_dir: Path, datasets: dict):
    """(held-out samples, generated plans) of a finished run, for plots."""
    model, _, val, feats = _finished_run(run_dir, datasets)
    return val, model.generate(feats(val), goal=batch_goals(val, model)) if val else []
