"""Typed configuration, one dataclass per pipeline stage, and profiles as small YAML overrides.

Defaults live here (documented per field); ``configs/<profile>.yaml`` only overrides what differs.
``load_config("cpu", {"demos": {"n_demos": 5}})`` applies the profile and then explicit overrides.
Unknown keys are an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from relam.envs import TASKS, check_task_name
from relam.models.train_anticipation import AnticipationConfig
from relam.perception.keyframes import KeyframeConfig
from relam.perception.keypoints import KeypointConfig
from relam.platform import REPO_ROOT
from relam.reward import RewardConfig
from relam.rl.iql import IQLConfig
from relam.rl.ppo import PPOConfig

CONFIG_DIR = REPO_ROOT / "configs"


@dataclass
class EnvConfig:
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    """Tasks this profile runs (subset of the paper's five)."""
    image_size: int = 128
    """Stored frame size in pixels (square). SPEC §9: 128; the encoder resizes to 224."""


@dataclass
class DemoConfig:
    n_demos: int = 100
    """Action-free demo videos per task (paper: 100)."""
    extra_frames_after_success: int = 10
    """Frames recorded after the simulator's first success, so the last keyframe shows the task done (SPEC §5)."""
    seed_offset: int = 0
    """Demo attempt i uses reset seed ``seed_offset + i``; evaluation seeds live far away (1_000_000+)."""
    max_attempts_factor: float = 2.0
    """Give up (clear error) after ``n_demos * factor`` attempts if the expert keeps failing."""
    unseen: int = 0
    """Unseen demos per task (ours): collected from ``unseen_seed_offset`` on, never trained on, for a less noisy
    held-out error of the anticipation models than their ``val_fraction`` split gives (5 demos at ``cpu``);
    notebook 04 reports both (``relam.models.unseen_demos``). 0: none."""
    unseen_seed_offset: int = 200_000
    """First reset seed of the unseen demos: past the demos' and the offline data's seeds (500 000 on), before the
    RL training (2 000 000) and evaluation (1 000 000) ones."""
    task_overrides: dict = field(default_factory=dict)
    """{task: overrides of this section} for that task's demos (ours; the paper collects 100 per task), e.g.
    ``{door-open: {n_demos: 100}}``. ``for_task`` applies them. Why: the ``cpu`` profile's comments."""

    def __post_init__(self):
        check_task_overrides(self, "demos")

    def for_task(self, task: str | None) -> "DemoConfig":
        """The demo settings of ``task``: this section with ``task_overrides[task]`` applied and no per-task overrides
        left. ``None``: the profile's own."""
        return section_for_task(self, task, "demos")


@dataclass
class OfflineDataConfig:
    tasks: list[str] = field(default_factory=lambda: ["PushCube", "PickCube"])
    """Tasks that get an offline control dataset (ManiSkill, SPEC §7)."""
    n_expert: int = 100
    """Expert trajectories with actions (paper: 100)."""
    n_noisy: int = 100
    """Trajectories of the expert with action noise (paper: 100)."""
    seed_offset: int = 500_000
    """Reset seeds of the offline dataset start here (disjoint from demo and evaluation seeds)."""
    noise: dict = field(default_factory=dict)
    """Overrides of ``relam.envs.maniskill_tasks.NoiseParams`` for the noisy half; empty = the default
    scheme, chosen because it keeps a useful share of successes on both cube tasks."""


@dataclass
class PerceptionConfig:
    segmenter: str = "sim"
    """Frame-0 segmenter backend: 'sim' (ground truth, offline default) or 'sam3'."""
    segmenter_kwargs: dict = field(default_factory=dict)
    """Passed to the segmenter, e.g. {'model': '/path/to/sam3'}."""
    tracker: str = "sim"
    """Point tracker backend: 'sim' (ground truth, default in simulation), 'lk' or 'cotracker'."""
    tracker_kwargs: dict = field(default_factory=dict)
    """Passed to the tracker, e.g. {'checkpoint': '/path/to/scaled_offline.pth'}."""
    keypoints: KeypointConfig = field(default_factory=KeypointConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    anchor_generated_x0: bool = True
    """RL/relabelling with generated plans: correct each generated x^0 keypoint with its part's first-frame mask
    (``relam.rl.planners.AnchoredPlanner``; ours, not in the paper); how: ``x0_anchor``."""
    x0_anchor: str = "centroid"
    """'centroid' (default): move every generated x^0 keypoint with its part's mask centroid (relative to the
    part's mean centroid in the training demos), snap it onto the part if still off it, then let the model
    anticipate the later subgoals from the corrected x^0. 'nearest' (the default until 2026-11-25): only snap
    x^0 keypoints that lie off their part onto its mask and shift their subgoal paths along. Plan errors: see
    AnchoredPlanner. Success at ``cpu`` (3 seeds, simulator flag; nearest -> centroid): button-press-wall
    83.3 -> 100 %, drawer-open 23.3 -> 33.3 %, door-open 0 -> 0 % (PPO); IQL: README. 'reselect' (ours,
    2026-12-04): as 'centroid', and the keypoints whose selection needs the first frame only (the robot's under
    ``keypoints.selection: near-object``) are chosen again on it, exactly where the demos' were
    (``AnchoredPlanner(reselect=)``); the others as 'centroid'. Measured on PickCube (3 seeds, 40k, 100 states):
    robot subgoals x^2 / x^3 ~3.8 -> ~1.6 px from the expert's, but ``relam`` 61.3 -> 58.7 %, and every policy,
    ``relam-gt``'s too, succeeded less often with these plans than with 'centroid' ones, so not a profile's
    setting (README, stage 06). 'residual' (ours, 2026-12-07): as 'centroid', but each part moves only by the
    displacement its x^0 keypoints do not already hold (``AnchoredPlanner(mean_x0=)``, ``believed_centroids``):
    'centroid' assumes a model that answers the mean x^0 and moves a model that reads positions twice. PickCube's
    offline trajectories that reach the plan's last subgoal: 74.5 -> 76.0 % (the profile's model), 63.0 -> 73.5 %
    (the cube-reading model of ``anticipation.x0_weight``); successful ones stuck at the first subgoal: 2.3 -> 0 %,
    10.5 -> 0 %."""
    anchor_movable_only: bool = True
    """Anchoring with the simulator's masks: an x^0 keypoint must end on a part that can move (the drawer, not its
    static case; ``AnchoredPlanner(movable_fn=)``), centroids still from the whole prompt. False: anywhere on the
    prompt's mask (the default until 2026-12-01)."""
    task_overrides: dict = field(default_factory=dict)
    """{task: overrides of this section} for that task's keypoints, keyframes and plans (ours; the paper uses one
    setting for all tasks), e.g. ``{door-open: {keypoints: {num_keypoints: 8}}}``. A task whose keypoint count
    differs must say so in ``anticipation.task_overrides`` too (its model predicts that many points; checked at
    load), and the multi-task model leaves it out (one model, one K). Why: the ``cpu`` profile's comments."""

    def __post_init__(self):
        if self.x0_anchor not in ("nearest", "centroid", "reselect", "residual"):
            raise ValueError(f"unknown perception.x0_anchor {self.x0_anchor!r}; choose 'nearest', 'centroid', "
                             "'reselect' or 'residual'")
        check_task_overrides(self, "perception")

    def for_task(self, task: str | None) -> "PerceptionConfig":
        """The perception settings of ``task``: this section with ``task_overrides[task]`` applied and no per-task
        overrides left. ``None``: the profile's own (what every task without an override uses)."""
        return section_for_task(self, task, "perception")


@dataclass
class Config:
    profile: str = "cpu"
    """Profile name; results go to ``results/<profile>/`` unless ``results_dir`` is set."""
    seed: int = 0
    """Global seed for anything random that has no seed of its own."""
    results_dir: str = ""
    """Where this profile's outputs go; empty = ``<repo>/results/<profile>``."""
    torch_threads: int = 1
    """torch.set_num_threads in training loops: 2 threads under load were 10-20x slower (PLATFORM.md)."""
    env: EnvConfig = field(default_factory=EnvConfig)
    demos: DemoConfig = field(default_factory=DemoConfig)
    offline: OfflineDataConfig = field(default_factory=OfflineDataConfig)
    perception: PerceptionConfig = field(default_factory=PerceptionConfig)
    anticipation: AnticipationConfig = field(default_factory=AnticipationConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)

    @property
    def out(self) -> Path:
        return Path(self.results_dir) if self.results_dir else REPO_ROOT / "results" / self.profile

    @property
    def figures_dir(self) -> Path:
        """Paper figures: ``paper_figures/<profile>/``; under the results dir when that is overridden (tests, CI),
        so a smoke run never overwrites the committed figures."""
        return self.out / "paper_figures" if self.results_dir else REPO_ROOT / "paper_figures" / self.profile

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class ConfigError(ValueError):
    pass


def available_profiles() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _merge(obj, overrides: dict, where: str):
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(overrides).__name__}")
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"unknown config key {where + key!r}; valid keys here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, f"{where}{key}.")
        else:
            setattr(obj, key, value)
    return obj


def load_config(profile: str = "cpu", overrides: dict | None = None) -> Config:
    path = CONFIG_DIR / f"{profile}.yaml"
    if not path.exists():
        raise ConfigError(f"unknown profile {profile!r}: no {path}. Available profiles: "
                          f"{', '.join(available_profiles())}")
    data = yaml.safe_load(path.read_text()) or {}
    cfg = _merge(Config(profile=profile), data, "")
    cfg.profile = profile
    if overrides:
        _merge(cfg, overrides, "")
    env_override = os.environ.get("RELAM_RESULTS_DIR")
    if env_override and not cfg.results_dir:
        cfg.results_dir = env_override
    for t in list(cfg.env.tasks) + list(cfg.offline.tasks) + list(cfg.ppo.tasks) + list(cfg.iql.tasks):
        check_task_name(t)
    _validate(cfg)   # the overrides were set field by field, past each dataclass's own check
    check_keypoint_counts(cfg)
    return cfg


def section_for_task(section, task: str | None, name: str):
    """A copy of config ``section`` (a dataclass with a ``task_overrides`` field, named ``name``) with
    ``task_overrides[task]`` applied and no per-task overrides left; ``None``: the section's own settings."""
    return section_with(section, section.task_overrides.get(task, {}) if task else {}, f"{name}.")


def section_with(section, overrides: dict, where: str):
    """A copy of config ``section`` with ``overrides`` applied (unknown keys name ``where``), checked as the
    section itself is (its ``__post_init__``), and no per-task overrides left."""
    out = copy.deepcopy(section)
    out.task_overrides = {}
    if overrides:   # _merge sets field by field: a task's own values get the section's checks too
        _validate(_merge(out, copy.deepcopy(overrides), where))
    return out


def check_task_overrides(section, name: str) -> None:
    """Each ``task_overrides`` entry of ``section`` names a known task and holds settings of the section that
    apply: unknown keys fail here, at load time, not after hours of earlier stages."""
    for task, over in section.task_overrides.items():
        check_task_name(task)
        if not isinstance(over, dict) or "task_overrides" in over:
            raise ValueError(f"{name}.task_overrides.{task} must be a mapping of {name} settings "
                             f"(not task_overrides itself), got {over!r}")
        section_for_task(section, task, name)


def check_keypoint_counts(cfg: Config) -> None:
    """Each task's anticipation model must predict as many keypoints as its perception settings choose: a
    mismatch would otherwise surface hours later, when stage 04 meets the subgoal data."""
    tasks = set(cfg.env.tasks) | set(cfg.offline.tasks) | set(cfg.perception.task_overrides) \
        | set(cfg.anticipation.task_overrides) | {None}
    for t in sorted(tasks, key=str):
        kp = cfg.perception.for_task(t).keypoints.num_keypoints
        km = cfg.anticipation.for_task(t).model.num_keypoints
        if kp != km:
            where = f"task {t!r}" if t else "the profile"
            key = f"anticipation.task_overrides.{t}.model.num_keypoints" if t else "anticipation.model.num_keypoints"
            raise ConfigError(f"{where} chooses K = {kp} keypoints (perception) but its anticipation model predicts "
                              f"K = {km}; set {key}: {kp} (relam.ablations.num_keypoints_overrides sets both)")


def task_keypoints(cfg: Config, task: str) -> int:
    """K of ``task``'s keypoints, plans and anticipation model."""
    return cfg.perception.for_task(task).keypoints.num_keypoints


def multitask_tasks(cfg: Config) -> list[str]:
    """The profile's tasks the multi-task anticipation model trains on and plans for: those with the profile's own
    keypoint count (one model predicts one K)."""
    return [t for t in cfg.env.tasks if task_keypoints(cfg, t) == cfg.anticipation.model.num_keypoints]


def _validate(obj) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate(value)
    if hasattr(obj, "__post_init__"):
        obj.__post_init__()


def config_from_dict(data: dict) -> Config:
    """Rebuild a Config saved with ``to_dict`` (e.g. handed to a worker process)."""
    data = dict(data)
    profile = data.pop("profile", "cpu")
    return _merge(Config(profile=profile), data, "")


def save_config(cfg: Config, path: Path) -> None:
    from relam.io import atomic_write_text
    atomic_write_text(path, json.dumps(cfg.to_dict(), indent=2))
