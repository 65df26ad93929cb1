"""Hierarchical PPO on Meta-World with the ReLAM reward (paper §4.1, App. A.3; SPEC §6).

Stable-Baselines3 PPO with three additions:
- GAE cut at subgoal completion: ``GAECutVecEnv`` reports the transition that reached a subgoal as ``done`` TO
  THE ALGORITHM ONLY. In SB3 a ``done`` only stops the advantage recursion (``episode_starts`` in the rollout
  buffer); the env below is not reset and the next observation is the ongoing episode's. So advantages are
  computed per sub-task (paper App. A.3). The cut sits outside ``VecNormalize`` so the return statistics
  used for reward scaling still see whole episodes.
- Reward scaling by the running std of the discounted return: ``VecNormalize(norm_obs=False, norm_reward=True)``.
- Policies: ``keypoints`` (MLP over current keypoints, subgoal, their difference and proprioception; our fast CPU
  variant) and ``pixels`` (the paper's: 3-layer CNN over the RGB frame + that MLP, concatenated -> MLP).

A run lives in ``results/<profile>/runs/<task>/<method>/seed<k>/``: ``config.json``, ``train.csv`` (per rollout:
training episodes' success and last-subgoal shares, return, length, fps), ``eval.csv`` (every ``eval_every``
steps: simulator success share and last-subgoal share over ``eval_episodes`` held-out initial states),
TensorBoard events under ``tb/``, ``checkpoint.zip`` + ``vecnormalize.pkl`` (atomic, at every evaluation; a rerun
resumes from them), ``selected.zip`` (the checkpoint chosen on validation states, ``validation_episodes``) and,
when finished, ``model.zip`` (the final model) and ``results.json``. A finished run with the same config
is skipped.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from relam.envs import is_count
from relam.io import append_csv_row, atomic_path, atomic_write_text, truncate_csv_rows, without_options_off
from relam.reward import RewardConfig
from relam.rl.runs import (begin_run, evaluate_policy, evaluate_with_validation, grid, run_dir_of, run_one_main,
                           selected_index)

METHODS = ("relam", "relam-gt", "env-reward")
TRAIN_SEED_OFFSET = 2_000_000  # RL training initial states


@dataclass
class PPOConfig:
    tasks: list[str] = field(default_factory=lambda: ["drawer-open", "door-open", "button-press-wall"])
    """Meta-World tasks trained with PPO (SPEC §6)."""
    methods: list[str] = field(default_factory=lambda: ["relam", "relam-gt"])
    """'relam' (subgoals from the anticipation model), 'relam-gt' (ground-truth keypoint subgoals) and, as a
    reference (not the paper's; opt-in), 'env-reward': the simulator's own shaped reward in ReLAM's form
    (``relam.reward.env_reward_signal``) with the same observation as 'relam' (its generated subgoals) and no GAE
    cut. It tells whether a task is learnable by this PPO at the budget at all. Measured at ``cpu`` (150k steps, 3 seeds,
    2026-12-02): drawer-open 0 / 0 / 100 %, door-open 0 / 40 / 0 % (README, stage 05)."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Training seeds (paper: 5)."""
    total_steps: int = 1_000_000
    """Environment steps per run."""
    policy: str = "pixels"
    """'pixels' (paper: image + keypoints) or 'keypoints' (keypoints + proprioception; fast CPU variant)."""
    anticipation_run: str = "task"
    """Which anticipation model plans for 'relam': 'task' (the per-task model) or 'multitask'."""
    train_seed_pool: int = 500
    """Training initial states are drawn from this many task seeds; each is planned once (cached)."""
    learning_rate: float = 3e-4
    """Lost in the paper's text; ours."""
    lr_schedule: str = "constant"
    """'constant' or 'linear' (annealed to 0 at ``total_steps``, CleanRL's default); the paper's is lost. Measured at
    ``cpu`` (relam, 2026-12-01): 'linear' steadies drawer-open (3 seeds, 50 held-out states: 64.0 -> 81.3 %) but
    door-open, which learns after ~100k steps, fell 80 / 80 -> 0 / 0 % (seeds 0 / 1, 10 evaluation states) and
    button-press-wall 100 -> 82.7 % (3 seeds, 50 held-out states), so 'constant' stays.
    Re-measured 2026-12-02 with the later defaults (drawer-open relam, validation-selected): 100 / 50 / 90 % (final
    80 / 100 / 90) against constant's 70 / 100 / 90 (final 70 / 100 / 80) on the same machine: within the spread.
    A finished 'linear' run extended to a larger budget resumes on the new line (its rate jumps back up)."""
    n_steps: int = 2000
    """Rollout length per update (paper)."""
    batch_size: int = 64
    """Minibatch (paper)."""
    n_epochs: int = 10
    """Epochs per update (paper). 20 on door-open ``relam`` (``cpu``, 150k, seeds 0-2, 2026-12-06): 20 / 0 / 60 %
    against 80 / 0 / 80; batch 200 (fewer gradient steps, ``cpu`` 6 seeds) 28.3 against 53.3 (README, stage 05)."""
    gamma: float = 0.99
    """Discount (paper). 0.995 with ``gae_lambda`` 0.98 on door-open ``relam`` (``cpu``, 150k, seeds 0-2,
    2026-12-06): 0 / 0 / 0 % against 80 / 0 / 80 (README, stage 05)."""
    gae_lambda: float = 0.95
    """GAE lambda (paper)."""
    clip_range: float = 0.2
    """PPO clip (paper)."""
    ent_coef: float = 0.0
    """Entropy bonus (paper)."""
    vf_coef: float = 0.5
    """Value loss weight (paper)."""
    max_grad_norm: float = 0.5
    """Gradient clip (paper)."""
    target_kl: float | None = None
    """Ours (None: off, SB3's default; the paper gives none): stop an update's epochs early once the approximate KL
    between the old and the new policy exceeds 1.5 x this (SB3 ``target_kl``), so that one rollout cannot move the
    policy far. Why one might: door-open's policies learn and then collapse (a ``relam-gt`` seed at 40 % from 30k
    to 45k steps, 0 % from 60k). Measured at ``cpu`` (door-open ``relam``, 0.02, seeds 0-2, 2026-12-05): 0 / 0 / 0 %
    at 120k-135k steps (stopped; the profile 80 / 0 / 80), no stage past the first, so it stays off (README,
    stage 05)."""
    gae_cut: bool = True
    """Cut GAE at subgoal completion (paper App. A.3); False for the ablation."""
    normalize_reward: bool = True
    """Divide rewards by the running std of the discounted return (paper)."""
    normalize_obs: bool = False
    """Ours: also standardise the point observations (keypoints, subgoal, proprioception; not the image) by their
    running mean and std (SB3's ``VecNormalize(norm_obs=True)``, clipped at 10 std); the statistics are saved in
    ``vecnormalize.pkl`` and used, frozen, at evaluation. Measured at ``cpu`` (door-open, 150k, 3 seeds, final
    evaluation, 2026-12-02): ``relam`` 0 / 0 / 0 % (the profile on the same machine 0 / 10 / 10), ``relam-gt``
    0 / 30 / 40 % (validation-selected 0 / 20 / 40; Table 4: 26.7 %), both 1.0-1.5 stages reached; so it stays off."""
    net_arch: list[int] = field(default_factory=lambda: [256, 256])
    """Hidden layers of the policy and value MLPs after the feature extractor (ours)."""
    diff_scale: float = 1.0
    """The policy's input ``subgoal - keypoints`` is multiplied by this (ours; 1: as before). Why one might: the
    stage threshold is ~5 px, i.e. differences of ~0.04 in normalised coordinates beside coordinates of ~0.5, so
    the errors the policy must drive to zero are tiny inputs of a tanh MLP. Measured at ``cpu`` (relam, x10, 3 seeds):
    drawer-open 73.3 -> 80.0 %, door-open 46.7 -> 0 %, so it stays 1 (README, PPO)."""
    subgoal_lift: bool = False
    """Ours (``relam.rl.lift``): the policy also sees ``10 * (lifted subgoal - hand)``, the subgoal's robot keypoints
    lifted to a 3-D hand target by a regressor fitted on the task's demos (keypoint tracks -> recorded hand
    position; kept as ``lift.pt`` in the run directory). Measured at ``cpu`` (door-open relam, 3 seeds): 60 / 80 / 0
    -> 30 / 0 / 10 %, so it stays off."""
    use_sde: bool = False
    """Ours (off): generalized State-Dependent Exploration (SB3 ``use_sde``): the exploration noise is a linear
    function of the policy's features with weights resampled every ``sde_sample_freq`` steps, so it is smooth in
    time and state instead of white noise on every action. On in the ``cpu`` profile (with ``sde_sample_freq: 4``,
    ``log_std_init: -2``; measured 2026-12-03, 150k steps, validation-selected): drawer-open relam 80.0 -> 93.3 % over
    6 seeds (no seed worse), relam-gt 96.7 -> 96.7, button-press-wall 100 / 100 -> 100 / 96.7, door-open relam
    6.7 -> 3.3 and relam-gt 26.7 -> 23.3 (3 seeds: within the spread). Off here, as the paper's PPO."""
    sde_sample_freq: int = -1
    """With ``use_sde``: resample the noise weights every this many steps (-1: once per rollout, SB3's default)."""
    squash_output: bool = False
    """Ours (off; needs ``use_sde``, SB3 offers it only there): the action is tanh of the Gaussian sample (SB3
    ``squash_output``, log-probabilities corrected), so it always lies in the action box. Why one might: with
    clipping, the policy's mean can drift past the box (door-open's ``cpu`` policies: the raw mean beyond +-1 in
    13-58 % of steps per action dimension), where the exploration noise no longer changes the executed action and
    that dimension stops learning. Measured at ``cpu`` (door-open ``relam``, 150k, 6 seeds, validation-selected,
    2026-12-05): 80 / 0 / 80 / 50 / 90 / 20 -> 0 / 50 / 70 / 10 / 0 / 10 % (53.3 -> 23.3); the squashed policies
    still sit at the box's edge (pre-tanh mean beyond +-2 in 7-48 % of steps), so it stays off (README, stage 05)."""
    log_std_init: float = 0.0
    """Initial log std of the action noise (SB3's default 0). With ``use_sde`` the noise std is about
    exp(log_std_init) x the norm of the policy's last hidden layer (~8 for 256 tanh units), hence RL Zoo's -2."""
    eval_every: int = 20_000
    """Evaluate (and checkpoint) every this many environment steps."""
    eval_episodes: int = 10
    """Deterministic evaluation episodes, each from a different held-out initial state."""
    validation_episodes: int = 20
    """Checkpoint selection (ours; the paper reports final policies). At every evaluation the policy also plays
    this many VALIDATION initial states (task seeds 3_000_000+, disjoint from the training pool and from the
    evaluation states); the run's result is the evaluation of the checkpoint that scored best on them (ties: the
    later), saved as ``selected.zip``. 0: off, the result is the final model's. Why: at ``cpu``, drawer-open
    policies peak and then slip (a seed at 100 % from 45k to 60k steps ends at 50 %). Measured at ``cpu`` (3 seeds,
    50 held-out states, selected vs final): drawer-open relam 82.7 vs 64.0 %, relam-gt 98.0 vs 95.3 %, door-open
    relam-gt 32.0 vs 26.0 %; the final model was chosen in the other runs. It costs ``validation_episodes`` x
    (number of evaluations) episodes, ~15 % more env steps at ``cpu``."""
    keypoint_depth: bool | str = False
    """Ours (off): the keypoint observation also carries each keypoint's camera depth (True) or 3-D world position
    ('xyz'), as ``iql.keypoint_depth`` (``relam.rl.env.depth_observation``): one camera's 2-D keypoints leave a
    point's place along its view ray open. Measured at ``cpu`` (door-open, 150k, validation-selected, 2026-12-05):
    ``relam`` 6 seeds 80 / 0 / 80 / 50 / 90 / 20 -> 60 / 100 / 90 / 10 / 40 / 0 % (53.3 -> 50.0), ``relam-gt`` 6 seeds
    43.3 -> 38.3; seeds 0-2 alone looked like a fix (``relam`` 53.3 -> 83.3), so it stays off (README, stage 05)."""
    max_steps: int | None = None
    """Ours: the episode limit of this PPO's training, evaluation and validation episodes (None: the task's own,
    ``TaskSpec.max_steps``, 200 for our Meta-World tasks; Meta-World's own ``max_path_length`` is 500). Success
    stays "the simulator's flag was ever 1" within the limit, so a longer limit also gives the policy longer to
    succeed at evaluation. Why one might: door-open's partly successful ``cpu`` policies succeed late (a seed at
    50 % in 200 steps, played for 500, opens the door at steps 151-238). Measured at ``cpu`` (door-open ``relam``,
    500, 150k, gSDE, validation-selected, 2026-12-06): 80 / 0 / 80 / 50 / 90 / 20 -> 60 / 10 / 40 / 70 / 10 / 10 %
    over 6 seeds (53.3 -> 33.3; final models 48.3 -> 18.3); the profile's own models played for 500 steps gain 5
    points over 12 seeds (62.5 -> 67.5). So it stays off (README, stage 05)."""
    action_repeat: int = 1
    """Ours (1: off, as the paper): the policy acts every this many env steps and its action is held in between
    (``relam.rl.env.ActionRepeat``: rewards summed, the GAE cut and the success flag kept if any of those steps raised
    them). ``total_steps``, ``eval_every``, ``n_steps`` and ``max_steps`` still count ENV steps, so a run's simulator
    budget and its curves' x-axis do not change; SB3's rollout holds ``n_steps / action_repeat`` policy steps. The
    stage machine and the tracker still see every env step. Why one might: each decision moves the arm twice as far,
    and the discount reaches twice as far in env steps (0.99 per decision), so reaching the door's handle and then
    pulling is fewer, longer decisions apart. Episode lengths in train.csv / eval.csv count policy steps. Measured at
    ``cpu`` (door-open ``relam``, k = 2, 150k env steps, gSDE, validation-selected, 2026-12-06): 63.3 -> 50.8 % over
    12 seeds (worse on 8, better on 2; seeds 0-5 alone 53.3 -> 58.3), so it stays off (README, stage 05)."""
    workers: int = 1
    """Runs trained in parallel processes (one core each)."""
    task_overrides: dict = field(default_factory=dict)
    """{task: overrides of this section} for that task's runs (ours; the paper uses one setting for all tasks), e.g.
    ``{door-open: {keypoint_depth: xyz}}``; the grid's own settings (tasks, methods, seeds, workers) are not
    per task. ``for_task`` applies them; a run's config.json holds its task's resolved settings."""

    def __post_init__(self):
        if self.max_steps is not None and not is_count(self.max_steps):
            raise ValueError(f"ppo.max_steps must be a positive whole number of env steps, or null for the task's own "
                             f"limit; got {self.max_steps!r}")
        k = self.action_repeat
        if not is_count(k):
            raise ValueError(f"ppo.action_repeat must be a positive whole number of env steps per action (1: off); "
                             f"got {k!r}")
        uneven = [f"{name}={getattr(self, name)}" for name in ("total_steps", "eval_every", "n_steps")
                  if getattr(self, name) % k]
        if uneven:
            raise ValueError(f"ppo.action_repeat={k}: {', '.join(uneven)} must be multiples of it (they count env "
                             f"steps, {k} per policy step); round them to a multiple of {k}")
        if self.squash_output and not self.use_sde:
            raise ValueError("ppo.squash_output needs ppo.use_sde: true (Stable-Baselines3 squashes gSDE actions "
                             "only); set both, or leave squash_output false")
        if self.task_overrides:
            from relam.config import check_task_overrides
            for task, over in self.task_overrides.items():
                grid = sorted(set(over) & set(GRID_SETTINGS)) if isinstance(over, dict) else []
                if grid:
                    raise ValueError(f"ppo.task_overrides.{task} sets {grid}, which belong to the whole grid: set "
                                     f"them in ppo itself")
            check_task_overrides(self, "ppo")

    def for_task(self, task: str | None) -> "PPOConfig":
        """The PPO settings of ``task``'s runs: ``task_overrides[task]`` applied, no per-task overrides left."""
        from relam.config import section_for_task
        return section_for_task(self, task, "ppo")


EXPERT_WARNING = ".*Constant\\(s\\) may be too high.*"
"""Meta-World's scripted expert warns this on every call; it plans the ground-truth subgoals (filtered where it
fires)."""

GRID_SETTINGS = ("tasks", "methods", "seeds", "workers")
"""PPO settings of the grid as a whole, not of one task's runs (``PPOConfig.task_overrides`` refuses them)."""


# --- environments ---------------------------------------------------------------------------------------

def make_planner(task: str, method: str, cfg, anticipation_run: str | None = None):
    """The (cached) planner of ``method`` for ``task`` under the full config ``cfg``; ``anticipation_run``
    ('task' or 'multitask', default ``cfg.ppo.anticipation_run``) picks the model that plans for 'relam'."""
    from relam.config import multitask_tasks, task_keypoints
    from relam.rl.planners import (AnchoredPlanner, CachedPlanner, ExpertPlanner, ModelPlanner, SimFirstFrameMasks,
                                   SimGoal, keypoint_prompt_index)

    pc = cfg.perception.for_task(task)
    if method in ("relam", "env-reward"):
        run = anticipation_run or cfg.ppo.for_task(task).anticipation_run
        ckpt = anticipation_dir(cfg, task, run) / "checkpoint.pt"
        if run == "multitask" and task not in multitask_tasks(cfg):
            raise ValueError(f"{task} has its own keypoint count (K = {task_keypoints(cfg, task)}, "
                             f"perception.task_overrides), so the multi-task model (K = "
                             f"{cfg.anticipation.model.num_keypoints}) does not plan it; use anticipation_run='task'")
        if not ckpt.exists():
            raise FileNotFoundError(f"no anticipation model at {ckpt}; run notebooks/04_anticipation.ipynb (or "
                                    f"./run_all.sh --profile {cfg.profile}) first")
        # one simulator instance serves both oracles (the first frame's masks and, if the model reads it, the goal)
        masks = SimFirstFrameMasks(task, cfg.env.image_size) if pc.anchor_generated_x0 else None
        try:
            planner = ModelPlanner(ckpt, task, goal_factory=lambda: SimGoal(task, cfg.env.image_size, share=masks))
        except Exception:   # e.g. a model not trained on this task: do not leave the masks' scene open
            if masks is not None:
                masks.close()
            raise
        if pc.anchor_generated_x0:
            kp = pc.keypoints
            centroid = pc.x0_anchor in ("centroid", "reselect", "residual")
            demos = training_demos(cfg, task) if centroid else None   # loaded once for both references
            planner = AnchoredPlanner(planner, masks, keypoint_prompt_index(masks.prompts, kp), kp.window,
                                      reference=demo_centroids(cfg, task, masks, demos) if centroid else None,
                                      replan=centroid,
                                      movable_fn=masks.movable if pc.anchor_movable_only else None,
                                      reselect=kp if pc.x0_anchor == "reselect" else None,
                                      mean_x0=demo_mean_x0(cfg, task, demos) if pc.x0_anchor == "residual" else None)
        return CachedPlanner(planner)
    if method == "relam-gt":
        reference = None
        if pc.keypoints.robot_reference:   # the arm points the demos chose (stage 03)
            from relam.perception.subgoals import robot_reference_of, subgoal_path
            reference = robot_reference_of(subgoal_path(cfg.out, task))
        return CachedPlanner(ExpertPlanner(task, cfg.env.image_size, pc.keypoints, pc.keyframes,
                                           cfg.demos.for_task(task).extra_frames_after_success, reference))
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def anticipation_dir(cfg, task: str, anticipation_run: str) -> Path:
    """Run directory of the anticipation model that plans ``task``: its per-task model ('task') or the
    'multitask' one."""
    if anticipation_run not in ("task", "multitask"):
        raise ValueError(f"unknown anticipation_run {anticipation_run!r}; choose 'task' or 'multitask'")
    return cfg.out / "anticipation" / (task if anticipation_run == "task" else "multitask")


def training_demos(cfg, task: str):
    """The task's subgoal dataset: the demos its anticipation model learnt from."""
    from relam.perception.subgoals import SubgoalDataset, subgoal_path

    return SubgoalDataset.load(subgoal_path(cfg.out, task), task)


def demo_centroids(cfg, task: str, masks_fn, ds=None) -> np.ndarray:
    """(P, 2) mean first-frame mask centroid per prompt over the task's subgoal-dataset demos (what the
    anticipation model learnt from; ``ds``: that dataset, if already loaded), with the masks ``masks_fn`` gives at
    RL time."""
    from relam.rl.planners import reference_centroids

    ds = training_demos(cfg, task) if ds is None else ds
    return reference_centroids(masks_fn(frame, {"task_seed": int(seed)})
                               for frame, seed in zip(ds.first_frames, ds.seeds))


def demo_mean_x0(cfg, task: str, ds=None) -> np.ndarray:
    """(K, 2) mean x^0 over the task's subgoal-dataset demos (``ds``: that dataset, if already loaded)."""
    ds = training_demos(cfg, task) if ds is None else ds
    return np.mean([s[0] for s in ds.subgoals], 0)


def make_env(task_name: str, planner, cfg, seed_pool=None, image_obs: bool | None = None, lift=None,
             env_reward: bool = False, goal_obs: bool = False, keypoint_depth: bool = False,
             max_steps: int | None = None, action_repeat: int = 1):
    """TaskEnv + ReLAM reward wrapper with the sim tracker (gymnasium env, not vectorised); with ``lift`` (a
    ``relam.rl.lift.SubgoalLift``) the observation also carries 'lift'; with ``env_reward`` the reward is the
    simulator's (``relam.rl.env.EnvRewardWrapper``, method 'env-reward'); with ``goal_obs`` 'state' ends with the
    task's goal position (``TaskEnv``, option ``iql.goal_observation``), then with ``keypoint_depth`` with the
    keypoints' camera depth (option ``iql.keypoint_depth``); ``max_steps`` (None: the task's) is the episode limit, in
    env steps; ``action_repeat`` > 1 holds each action for that many env steps (``relam.rl.env.ActionRepeat``)."""
    from relam.envs import make_task
    from relam.rl.env import ActionRepeat, EnvRewardWrapper, ReLAMRewardWrapper, SimOnlineTracker, TaskEnv

    policy = cfg.ppo.for_task(task_name).policy
    if policy not in ("pixels", "keypoints"):
        raise ValueError(f"unknown policy {policy!r}; choose 'pixels' or 'keypoints'")
    image_obs = (policy == "pixels") if image_obs is None else image_obs
    task = make_task(task_name, image_size=cfg.env.image_size, max_steps=max_steps)
    env = ReLAMRewardWrapper(TaskEnv(task, seed_pool, goal_obs), planner, SimOnlineTracker(task), planner.num_keypoints,
                             reward_config(cfg, task_name, planner.generated, getattr(planner, "plan_error", None)),
                             image_obs=image_obs,
                             image_size=cfg.env.image_size, keypoint_parts=keypoint_parts(cfg, task_name),
                             keypoint_depth=keypoint_depth)
    if env_reward:
        env = EnvRewardWrapper(env, task.dense_reward_max)
    if lift is not None:
        from relam.rl.lift import LiftObservation
        env = LiftObservation(env, lift)
    return env if action_repeat == 1 else ActionRepeat(env, action_repeat)


def run_env(task: str, method: str, planner, cfg, p: PPOConfig, lift=None, seed_pool=None):
    """The env of a PPO run of ``task`` / ``method`` under its settings ``p`` (training with ``seed_pool``,
    evaluation and ``run_stalls`` without): one place passes the run's env options to ``make_env``."""
    return make_env(task, planner, cfg, seed_pool, lift=lift, env_reward=method == "env-reward",
                    keypoint_depth=p.keypoint_depth, max_steps=p.max_steps, action_repeat=p.action_repeat)


def keypoint_parts(cfg, task: str) -> np.ndarray:
    """(K,) part (prompt index: robot 0, objects 1..) of each keypoint of ``task``'s plans, for the reward."""
    from relam.envs import task_spec
    from relam.rl.planners import keypoint_prompt_index
    return keypoint_prompt_index(task_spec(task).prompts, cfg.perception.for_task(task).keypoints)


def plan_setting(cfg, task: str, method: str, anticipation_run: str) -> dict:
    """Run-defining entries of a generated plan: the x^0 anchoring and WHICH trained anticipation model plans
    (a fingerprint of its run's config.json, so a retrained model with other settings makes runs and relabelled
    files stale). Absent for ground-truth plans, so their runs and files do not change with either."""
    if method == "relam-gt":
        return {}
    model_cfg = anticipation_dir(cfg, task, anticipation_run) / "config.json"
    fingerprint = hashlib.sha1(model_cfg.read_bytes()).hexdigest()[:12] if model_cfg.exists() else None
    pc = cfg.perception.for_task(task)
    out = {"anchor_generated_x0": pc.anchor_generated_x0, "anticipation_model": fingerprint}
    if pc.anchor_generated_x0 and pc.x0_anchor != "nearest":   # absent: runs before it
        out["x0_anchor"] = pc.x0_anchor
    if pc.anchor_generated_x0 and pc.anchor_movable_only:   # absent: runs before it
        out["anchor_movable_only"] = True
    return out


def perception_setting(cfg, task: str) -> dict:
    """Run-defining entries of every plan of ``task``, generated or ground truth: the keypoint and keyframe
    selection (with the task's own overrides)."""
    pc = cfg.perception.for_task(task)
    return {"keypoints": asdict(pc.keypoints), "keyframes": asdict(pc.keyframes)}


def policy_kwargs(p: PPOConfig) -> dict:
    """SB3 ``policy_kwargs`` of the ReLAM policy (features extractor by ``p.policy``, MLP heads)."""
    from relam.rl.hrl import KeypointFeatures
    arch = list(p.net_arch)
    kw = {"features_extractor_class": KeypointFeatures, "net_arch": {"pi": arch, "vf": arch}}
    if p.diff_scale != 1.0:   # left out at 1, so checkpoints of runs made before the option load as they were
        kw["features_extractor_kwargs"] = {"diff_scale": p.diff_scale}
    if p.log_std_init != 0.0:
        kw["log_std_init"] = p.log_std_init
    if p.squash_output:
        kw["squash_output"] = True
    return kw


def reward_config(cfg, task: str, generated: bool, plan_error: float | None = None) -> RewardConfig:
    """The profile's reward config of ``task`` (``reward.task_overrides`` applied) resolved for a generated
    (anticipation model, whose held-out subgoal error is ``plan_error``) or ground-truth plan."""
    return cfg.reward.for_task(task).for_plan(generated, plan_error)


def plan_error_of(cfg, task: str, anticipation_run: str) -> float | None:
    """Held-out subgoal error (normalised) of the anticipation model that plans ``task`` ('task' or 'multitask'
    run), from its metrics.json; None when it has not finished, which is an error where the reward needs it
    (``reward.delta_generated == 'model'``)."""
    from relam.models.train_anticipation import held_out_plan_error
    run_dir = anticipation_dir(cfg, task, anticipation_run)
    error = held_out_plan_error(run_dir, task, cfg.env.image_size)
    if error is None and cfg.reward.for_task(task).delta_generated == "model":
        raise FileNotFoundError(f"no finished anticipation model for {task!r} at {run_dir} (no metrics.json with its "
                                f"held-out error, which sets the stage threshold of generated plans); run "
                                f"notebooks/04_anticipation.ipynb (or ./run_all.sh --profile {cfg.profile}) first, or "
                                f"set reward.delta_generated to a number")
    return error


def reward_setting(cfg, task: str, generated: bool, anticipation_run: str) -> dict:
    """The resolved reward config as recorded in run configs and relabelled files."""
    return cfg.reward.for_task(task).settings(generated, plan_error_of(cfg, task, anticipation_run) if generated
                                              else None)


# --- evaluation -----------------------------------------------------------------------------------------

def evaluate(model, env, episodes: int, normalizer=None, **kwargs) -> dict:
    """Deterministic PPO policy on held-out initial states (``relam.rl.runs.evaluate_policy``). ``normalizer``: the
    run's ``VecNormalize`` (default: the model's own training env's); with ``normalize_obs`` the policy sees its
    observations standardised by those frozen statistics. A model loaded from a file has no env: pass
    ``load_normalizer(run_dir)``."""
    vn = normalizer if normalizer is not None else model.get_vec_normalize_env()
    return evaluate_policy(deterministic_actor(model, vn), env, episodes, **kwargs)


def deterministic_actor(model, normalizer=None):
    """``act(obs) -> action``: the PPO model's deterministic action, on observations standardised by the frozen
    ``normalizer`` (a ``VecNormalize``) when the run normalised them."""
    seen = normalizer.normalize_obs if normalizer is not None and normalizer.norm_obs else (lambda obs: obs)
    return lambda obs: model.predict(seen(obs), deterministic=True)[0]


def load_normalizer(run_dir: Path):
    """The run's saved ``VecNormalize`` statistics (``vecnormalize.pkl``), frozen, or None if it has none."""
    import pickle
    path = Path(run_dir) / "vecnormalize.pkl"
    if not path.exists():
        return None
    with open(path, "rb") as f:
        vn = pickle.load(f)
    vn.training = False
    return vn


def env_steps(model, p: PPOConfig) -> int:
    """Env steps a PPO model has trained for: SB3 counts policy steps, each ``p.action_repeat`` env steps."""
    return int(model.num_timesteps) * p.action_repeat


def evaluate_point(model, env, run_dir: Path, p: PPOConfig, state: dict) -> dict:
    """One evaluation (plus validation, if on) of the current model: appended to ``state['evals']`` and eval.csv,
    then passed to ``state['on_eval']`` if set.
    Call ``save_checkpoint`` after it: the checkpoint, then the selection, follow the evaluation history."""
    res = evaluate_with_validation(lambda n, offset: evaluate(model, env, n, seed_offset=offset), p.eval_episodes,
                                   p.validation_episodes)
    step = env_steps(model, p)
    state["evals"].append({"step": step, **res})
    append_csv_row(run_dir / "eval.csv", ["step"] + list(res), [step] + list(res.values()))
    if state.get("on_eval") is not None:
        state["on_eval"](step, res)
    return res


def _callback(run_dir: Path, eval_env, p: PPOConfig, state: dict):
    from stable_baselines3.common.callbacks import BaseCallback

    class RunCallback(BaseCallback):
        """Logs training episodes (success vs last subgoal), evaluates and checkpoints every eval_every steps."""

        def _on_training_start(self):
            self.episodes = []
            self.t_last, self.n_last = time.perf_counter(), env_steps(self, p)
            self.next_eval = (env_steps(self, p) // p.eval_every + 1) * p.eval_every

        def _on_step(self):
            for info in self.locals["infos"]:
                if "episode" in info:  # the Monitor's end-of-episode record: a real episode end
                    self.episodes.append((info.get("episode_success", False), info.get("reached_last", False),
                                          info["episode"]["r"], info["episode"]["l"]))
            # the last evaluation waits for the end of learn(): here it would see the model before its last update
            if self.next_eval <= env_steps(self, p) < p.total_steps:
                self.next_eval += p.eval_every
                self._evaluate()
            return True

        def _on_rollout_end(self):
            now = time.perf_counter()
            step = env_steps(self, p)
            fps = (step - self.n_last) / max(now - self.t_last, 1e-9)
            self.t_last, self.n_last = now, step
            if self.episodes:
                e = np.array(self.episodes, dtype=np.float64)
                row = [step, len(e), e[:, 0].mean(), e[:, 1].mean(), e[:, 2].mean(), e[:, 3].mean()]
            else:
                row = [step, 0, "", "", "", ""]
            self.episodes = []
            append_csv_row(run_dir / "train.csv", ["step", "episodes", "success_rate", "last_subgoal_rate",
                                                 "episode_return", "episode_length", "fps"], row + [round(fps, 1)])
            if row[1]:
                self.logger.record("rollout/success_rate", row[2])
                self.logger.record("rollout/last_subgoal_rate", row[3])

        def _evaluate(self):
            res = evaluate_point(self.model, eval_env, run_dir, p, state)
            for key in ("success_rate", "last_subgoal_rate", "validation_success_rate"):
                if key in res:
                    self.logger.record(f"eval/{key}", res[key])
            save_checkpoint(run_dir, self.model, state, env_steps(self.model, p))

    return RunCallback()


PPO_OPTIONS_ADDED_OFF = {("lr_schedule",): "constant", ("validation_episodes",): 0, ("diff_scale",): 1.0,
                         ("subgoal_lift",): False, ("normalize_obs",): False, ("use_sde",): False,
                         ("sde_sample_freq",): -1, ("log_std_init",): 0.0, ("squash_output",): False,
                         ("target_kl",): None, ("max_steps",): None, ("action_repeat",): 1,
                         ("keypoint_depth",): False, ("task_overrides",): {}}
"""Options added after runs were made, with their original behaviour: absent from run configs at that value."""


class LinearLR:
    """SB3 learning-rate schedule: ``lr`` times the share of the run still to go (a class, not a lambda, so the
    checkpoint pickles it plainly and a resumed run continues the same line)."""

    def __init__(self, lr: float):
        self.lr = lr

    def __call__(self, progress_remaining: float) -> float:
        return self.lr * progress_remaining


def learning_rate(p: PPOConfig):
    """The ``learning_rate`` argument of SB3's PPO for ``p.lr_schedule``."""
    if p.lr_schedule == "constant":
        return p.learning_rate
    if p.lr_schedule == "linear":
        return LinearLR(p.learning_rate)
    raise ValueError(f"unknown ppo.lr_schedule {p.lr_schedule!r}; choose 'constant' or 'linear'")


def save_checkpoint(run_dir: Path, model, state: dict, step: int) -> None:
    """Model, reward-normaliser statistics and evaluation history, each written atomically; the model is also
    copied to ``selected.zip`` when its evaluation is the selected one so far (``selected_index``). (A crash
    between these writes can leave ``selected.zip`` one evaluation ahead of the history in state.json; the
    results then still name the selected step, from the history.) ``step``: the model's env steps (``env_steps``)."""
    with atomic_path(run_dir / "checkpoint.zip") as tmp:
        model.save(tmp)  # SB3 adds ".zip" only to suffix-less paths; the temporary name has a suffix
    evals = state["evals"]
    if evals and "validation_success_rate" in evals[-1] and evals[-1]["step"] == step \
            and selected_index(evals) == len(evals) - 1:
        with atomic_path(run_dir / "selected.zip") as tmp:
            shutil.copyfile(run_dir / "checkpoint.zip", tmp)
    vn = model.get_vec_normalize_env()
    if vn is not None:
        with atomic_path(run_dir / "vecnormalize.pkl") as tmp:
            vn.save(tmp)
    atomic_write_text(run_dir / "state.json", json.dumps({"step": step, "evals": state["evals"]}))


# --- one run and the grid -------------------------------------------------------------------------------

def run_config(cfg, task: str, method: str, seed: int) -> dict:
    """What defines a run (its config.json): changing any of it starts the run over."""
    p = cfg.ppo.for_task(task)
    ppo = without_options_off(asdict(p) | {"tasks": None, "methods": None, "seeds": None, "workers": None},
                              PPO_OPTIONS_ADDED_OFF)
    return {"task": task, "method": method, "seed": seed, "ppo": ppo,
            "reward": reward_setting(cfg, task, method != "relam-gt", p.anticipation_run)
            | ({"signal": "env-reward"} if method == "env-reward" else {}),
            **plan_setting(cfg, task, method, p.anticipation_run),
            **perception_setting(cfg, task), "image_size": cfg.env.image_size, "profile": cfg.profile}


def train_run(cfg, task: str, method: str, seed: int, on_eval=None) -> dict:
    """Train (or resume, or skip if finished) one PPO run; returns its results.json content. ``on_eval``: None or a
    callable ``(env_steps, evaluation dict)``, called after every evaluation (e.g. to plot a live curve)."""
    if on_eval is not None and not callable(on_eval):
        # checked up front: found at the first evaluation it would end a run after its first ``eval_every`` steps
        raise TypeError(f"on_eval must be None or a callable (env_steps, evaluation), got {on_eval!r}; PPO runs "
                        "print no progress bar of their own (the grid's bar counts runs)")
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    torch.set_num_threads(cfg.torch_threads)
    p = cfg.ppo.for_task(task)
    lr = learning_rate(p)                 # a bad schedule name fails before anything is written
    run_dir = run_dir_of(cfg, task, method, seed)
    done = begin_run(run_dir, run_config(cfg, task, method, seed),
                     ("checkpoint.zip", "vecnormalize.pkl", "state.json", "train.csv", "eval.csv", "model.zip",
                      "selected.zip", "lift.pt"),
                     budget=("ppo", "total_steps"), final_files=("model.zip",))
    if done is not None:
        return done

    from relam.rl.hrl import GAECutVecEnv

    planner = make_planner(task, method, cfg)
    pool = np.arange(TRAIN_SEED_OFFSET, TRAIN_SEED_OFFSET + p.train_seed_pool)
    lift = demo_lift(cfg, task, run_dir / "lift.pt") if p.subgoal_lift else None
    venv = DummyVecEnv([lambda: Monitor(run_env(task, method, planner, cfg, p, lift, pool),
                                        info_keywords=("episode_success", "reached_last"))])
    venv.seed(seed)
    if p.normalize_reward or p.normalize_obs:
        keys = [k for k in venv.observation_space.spaces if k != "image"] if p.normalize_obs else None
        venv = VecNormalize(venv, norm_obs=p.normalize_obs, norm_reward=p.normalize_reward, gamma=p.gamma,
                            norm_obs_keys=keys)
    if p.gae_cut:   # a no-op for 'env-reward', whose wrapper reports no subgoal_reached
        venv = GAECutVecEnv(venv)
    eval_env = run_env(task, method, planner, cfg, p, lift)

    state = {"evals": [], "on_eval": on_eval}
    resumed = (run_dir / "checkpoint.zip").exists() and (run_dir / "state.json").exists()
    if resumed:
        if (p.normalize_reward or p.normalize_obs) and (run_dir / "vecnormalize.pkl").exists():
            stats = VecNormalize.load(str(run_dir / "vecnormalize.pkl"), venv.venv if p.gae_cut else venv)
            _unwrap_vecnormalize(venv).ret_rms = stats.ret_rms
            if p.normalize_obs:
                _unwrap_vecnormalize(venv).obs_rms = stats.obs_rms
        model = PPO.load(run_dir / "checkpoint.zip", env=venv, device="cpu")
        state["evals"] = json.loads((run_dir / "state.json").read_text())["evals"]
        # the CSVs may hold rows written after the checkpoint: keep only what the checkpoint covers
        truncate_csv_rows(run_dir / "train.csv", env_steps(model, p))
        truncate_csv_rows(run_dir / "eval.csv", env_steps(model, p))
    else:
        for name in ("train.csv", "eval.csv"):
            (run_dir / name).unlink(missing_ok=True)
        model = PPO("MultiInputPolicy", venv, learning_rate=lr, n_steps=p.n_steps // p.action_repeat,
                    batch_size=p.batch_size, n_epochs=p.n_epochs, gamma=p.gamma, gae_lambda=p.gae_lambda,
                    clip_range=p.clip_range, target_kl=p.target_kl, ent_coef=p.ent_coef, vf_coef=p.vf_coef,
                    max_grad_norm=p.max_grad_norm,
                    use_sde=p.use_sde, sde_sample_freq=p.sde_sample_freq, policy_kwargs=policy_kwargs(p),
                    seed=seed, device="cpu", verbose=0)
    from stable_baselines3.common.logger import configure
    model.set_logger(configure(str(run_dir / "tb"), ["tensorboard"]))
    t0 = time.perf_counter()
    start_step = env_steps(model, p)
    remaining = p.total_steps - start_step
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=EXPERT_WARNING)
        if remaining > 0:
            model.learn(remaining // p.action_repeat, callback=_callback(run_dir, eval_env, p, state), reset_num_timesteps=False)
        if not state["evals"] or state["evals"][-1]["step"] < env_steps(model, p):
            evaluate_point(model, eval_env, run_dir, p, state)
    seconds = time.perf_counter() - t0
    save_checkpoint(run_dir, model, state, env_steps(model, p))
    with atomic_path(run_dir / "model.zip") as tmp:
        shutil.copyfile(run_dir / "checkpoint.zip", tmp)
    final = state["evals"][-1]
    chosen = state["evals"][selected_index(state["evals"])]
    results = {"task": task, "method": method, "seed": seed, "steps": env_steps(model, p),
               "success_rate": chosen["success_rate"], "last_subgoal_rate": chosen["last_subgoal_rate"],
               "selected_step": chosen["step"], "selected_eval": chosen, "final_eval": final,
               "evals": state["evals"], "seconds_this_session": round(seconds, 1),
               "steps_per_second": round((env_steps(model, p) - start_step) / max(seconds, 1e-9), 1),
               "resumed": resumed, "policy": p.policy}
    failed = getattr(planner, "failed_seeds", None)
    if failed is not None:   # relam-gt: states whose expert never succeeded have no ground-truth plan
        results["expert_failed_seeds"] = sorted(failed)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    venv.close()
    eval_env.close()
    planner.close()
    return results


def run_stalls(cfg, task: str, method: str, seed: int, episodes: int | None = None) -> dict:
    """Where a finished run's reported policy (``selected.zip``, else ``model.zip``) stops passing its plans' stages,
    on ``episodes`` (default ``ppo.validation_episodes``, at least 1) validation states:
    ``relam.rl.plan_check.stage_stalls``, deterministic actions."""
    from stable_baselines3 import PPO
    from relam.rl.plan_check import stage_stalls

    p = cfg.ppo.for_task(task)
    run_dir = run_dir_of(cfg, task, method, seed)
    path = next((run_dir / n for n in ("selected.zip", "model.zip") if (run_dir / n).exists()), None)
    if path is None:
        raise FileNotFoundError(f"no finished PPO run at {run_dir} (no selected.zip or model.zip): train it first "
                                f"(relam.rl.ppo.train_run, notebook 05)")
    act = deterministic_actor(PPO.load(path, device="cpu"), load_normalizer(run_dir))
    planner = make_planner(task, method, cfg)
    lift = demo_lift(cfg, task, run_dir / "lift.pt") if p.subgoal_lift else None
    env = run_env(task, method, planner, cfg, p, lift)
    try:
        with warnings.catch_warnings():   # the scripted expert's (ground-truth plans), as in train_run
            warnings.filterwarnings("ignore", message=EXPERT_WARNING)
            return stage_stalls(env, act, max(p.validation_episodes, 1) if episodes is None else episodes)
    finally:
        env.close()
        planner.close()


def demo_lift(cfg, task: str, path: Path):
    """The run's ``SubgoalLift`` (``relam.rl.lift.load_or_fit``), fitted on the task's demos (``demo_pairs``)."""
    from relam.envs import make_task
    from relam.rl.lift import SubgoalLift, demo_pairs, load_or_fit

    def fit():
        t = make_task(task, image_size=cfg.env.image_size)
        try:
            keypoints, proprio = demo_pairs(cfg, t)
            parts = keypoint_parts(cfg, task)
        finally:
            t.close()
        return SubgoalLift(np.flatnonzero(parts == 0), len(parts)).fit(keypoints, proprio)
    return load_or_fit(path, fit)


def _unwrap_vecnormalize(venv):
    from stable_baselines3.common.vec_env import VecNormalize
    while not isinstance(venv, VecNormalize):
        venv = venv.venv
    return venv


def run_grid(cfg, progress: bool = True) -> list[dict]:
    """Every task x method x seed of the profile's ``ppo`` section (``relam.rl.runs.run_grid``)."""
    return grid(cfg, "ppo", cfg.ppo, progress)


def main(argv=None) -> int:
    return run_one_main("ppo", train_run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
