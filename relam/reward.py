"""The ReLAM keypoint reward (paper Eq. 3-5, App. A.2; SPEC §5).

Pieces, usable on their own:
- ``keypoint_distance``: d_k(t) = (1/K) sum_i |x_i(t) - g_i^k| in normalised image units (Eq. 3);
- ``reward_function(name, d_max)``: f(d), monotone decreasing from 0 at d = 0 to -1 at d >= d_max. Four shapes
  with the same range (paper §4.3): ``piecewise`` (default; slopes grow as d -> 0), ``linear``,
  ``exponential``, ``logistic``;
- ``StageMachine``: one episode's progress through the subgoals g^1 ... g^M. Each step pays
  r = f(d_k) + r_stage * [stage k reached] + r_success * [task accomplished]   (Eq. 4)
  and advances k when the stage criterion holds.

Why the defaults are what they are (SPEC §5 measured the reward being gamed when read literally):
- ``criterion='max'``: a stage is reached only when EVERY keypoint is within delta of its target. With the
  literal ``mean`` criterion a policy can park the arm points on their targets and leave the object (one
  point of four, moving a few pixels) where it is.
- ``success_source='env'``: the success bonus (and the end of the episode) comes from the simulator's success
  flag. Reaching the last subgoal never ends the episode by itself; the distance to the last subgoal keeps
  being paid until success or the time limit. ``'subgoals'`` (success = last subgoal reached) exists for
  settings with no success detector and is gameable.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

REWARD_FUNCTIONS = ("piecewise", "linear", "exponential", "logistic")


@dataclass
class RewardConfig:
    function: str = "piecewise"
    """Shape of f(d): 'piecewise' (paper's best), 'linear', 'exponential' or 'logistic'; all map [0, d_max]
    onto [0, -1] and are clipped beyond d_max."""
    d_max: float = 0.5
    """Distance (normalised image units) at which f reaches -1 (ours)."""
    knot: tuple = (0.25, -0.5)
    """Piecewise only: the middle knot (fraction of d_max, value); ours: (0.25 d_max, -0.5), so the slope is
    2/d_max near the goal and 2/(3 d_max) far from it."""
    criterion: str = "max"
    """'max': stage reached when every keypoint is within delta of its target (default: closes the gap of
    SPEC §5); 'mean': when the mean distance d_k < delta (Eq. 3 read literally; gameable)."""
    delta: float = 0.04
    """Stage threshold in normalised units (ours: ~5 px at 128 px)."""
    stage_bonus: float = 1.0
    """r_stage, paid once per subgoal reached (ours)."""
    success_bonus: float = 10.0
    """r_success, paid when the task is accomplished; the episode then ends (ours)."""
    success_source: str = "env"
    """'env': the simulator's success flag (default); 'subgoals': reaching the last subgoal (gameable; only for
    settings with no success detector)."""
    end_on_success: bool = True
    """End the episode (terminated=True) on success, as the paper does."""
    exp_rate: float = 5.0
    """Exponential only: f = -(1 - exp(-a x)) / (1 - exp(-a)), x = d / d_max."""
    logistic_slope: float = 10.0
    """Logistic only: a sigmoid of slope b centred at d_max / 2, rescaled to [0, -1] on [0, d_max]."""

    def __post_init__(self):
        if self.function not in REWARD_FUNCTIONS:
            raise ValueError(f"unknown reward function {self.function!r}; choose one of {REWARD_FUNCTIONS}")
        if self.criterion not in ("max", "mean"):
            raise ValueError(f"unknown stage criterion {self.criterion!r}; choose 'max' or 'mean'")
        if self.success_source not in ("env", "subgoals"):
            raise ValueError(f"unknown success_source {self.success_source!r}; choose 'env' or 'subgoals'")
        if not (self.d_max > 0 and self.delta > 0):
            raise ValueError(f"d_max and delta must be positive, got d_max={self.d_max}, delta={self.delta}")


def keypoint_distance(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-keypoint Euclidean distances (..., K) between (..., K, 2) arrays."""
    return np.linalg.norm(np.asarray(points, np.float64) - np.asarray(target, np.float64), axis=-1)


def reward_function(cfg: RewardConfig):
    """f(d) for the configured shape: vectorised, f(0) = 0, f(d >= d_max) = -1, monotone decreasing."""
    d_max = cfg.d_max
    if cfg.function == "piecewise":
        xs = np.array([0.0, cfg.knot[0] * d_max, d_max])
        ys = np.array([0.0, cfg.knot[1], -1.0])
        if not (0 < cfg.knot[0] < 1 and -1 < cfg.knot[1] < 0):
            raise ValueError(f"piecewise knot must lie inside (0, 1) x (-1, 0), got {cfg.knot}")
        return lambda d: np.interp(np.asarray(d, np.float64), xs, ys)
    if cfg.function == "linear":
        return lambda d: -np.clip(np.asarray(d, np.float64) / d_max, 0.0, 1.0)
    if cfg.function == "exponential":
        a = cfg.exp_rate
        return lambda d: -(1 - np.exp(-a * np.clip(np.asarray(d, np.float64) / d_max, 0, 1))) / (1 - math.exp(-a))
    b = cfg.logistic_slope

    def logistic(d):
        s = lambda x: 1.0 / (1.0 + np.exp(-b * (x - 0.5)))  # noqa: E731
        x = np.clip(np.asarray(d, np.float64) / d_max, 0.0, 1.0)
        return -(s(x) - s(0.0)) / (s(1.0) - s(0.0))
    return logistic


@dataclass
class StepReward:
    reward: float
    distance: float          # mean keypoint distance to the current target (Eq. 3)
    max_distance: float      # largest single keypoint distance
    stage: int               # index of the target AFTER this step (0 = g^1)
    stage_reached: bool      # a stage bonus was paid on this step (PPO cuts GAE here)
    reached_last: bool       # the last subgoal has been reached (now or earlier) in this episode
    success: bool            # the success source fired on this step
    terminate: bool          # the episode should end here


class StageMachine:
    """Progress of one episode through the targets g^1 ... g^M (the plan without x^0).

    ``subgoals`` is the whole plan (M+1, K, 2) including x^0, normalised. An empty plan (M = 0: the model
    predicted only x^0) gives no distance term and no stage bonuses, only the success bonus, with a warning.
    Non-finite keypoints (a tracker that lost a point) are replaced by that point's last finite position; a
    point never seen finite counts as d_max away. Both cases warn instead of crashing the rollout.
    """

    def __init__(self, subgoals: np.ndarray, cfg: RewardConfig = RewardConfig()):
        plan = np.asarray(subgoals, np.float64)
        if plan.ndim != 3 or plan.shape[-1] != 2:
            raise ValueError(f"subgoal plan must be (M+1, K, 2), got shape {plan.shape}")
        self.cfg, self.f = cfg, reward_function(cfg)
        self.targets = plan[1:]
        self.k = 0
        self.reached_last = False
        self._last_finite = None
        if len(self.targets) == 0:
            warnings.warn("empty subgoal plan (no subgoal after x^0): the reward is only the success bonus",
                          RuntimeWarning, stacklevel=2)

    @property
    def num_stages(self) -> int:
        return len(self.targets)

    def target(self) -> np.ndarray | None:
        return self.targets[self.k] if self.num_stages else None

    def _clean(self, points: np.ndarray) -> np.ndarray:
        pts = np.asarray(points, np.float64)
        finite = np.isfinite(pts).all(-1)
        if finite.all():                      # the common case, kept cheap: this runs every env step
            self._last_finite = pts
            return pts
        warnings.warn(f"tracker returned non-finite coordinates for {int((~finite).sum())} keypoint(s); holding "
                      "their last finite position", RuntimeWarning, stacklevel=3)
        held = np.full_like(pts, np.nan) if self._last_finite is None else self._last_finite
        pts = np.where(finite[:, None], pts, held)
        self._last_finite = pts
        return pts

    def step(self, points: np.ndarray, env_success: bool = False) -> StepReward:
        cfg = self.cfg
        pts = self._clean(points)
        if self.num_stages == 0:
            dist = dmax = 0.0
            reward, reached = 0.0, False
        else:
            per_point = keypoint_distance(pts, self.targets[self.k])
            per_point = np.where(np.isfinite(per_point), per_point, cfg.d_max)
            dist, dmax = float(per_point.mean()), float(per_point.max())
            reward = float(self.f(dist))
            crit = dmax if cfg.criterion == "max" else dist
            reached = crit < cfg.delta and not self.reached_last
        if reached:
            reward += cfg.stage_bonus
            if self.k + 1 < self.num_stages:
                self.k += 1
            else:
                self.reached_last = True
        success = bool(env_success) if cfg.success_source == "env" else (reached and self.reached_last)
        if success:
            reward += cfg.success_bonus
        return StepReward(reward, dist, dmax, self.k, bool(reached), self.reached_last, success,
                          success and cfg.end_on_success)


def relabel(tracks: np.ndarray, subgoals: np.ndarray, env_success: np.ndarray,
            cfg: RewardConfig = RewardConfig()) -> dict:
    """Rewards of a recorded trajectory (SPEC §7): ``tracks`` (T+1, K, 2) keypoints at every state (normalised),
    ``env_success`` (T,) the success flag after each action. Transition t (state t -> t+1) is rewarded on the
    keypoints of state t+1. After a success that ends the episode the remaining transitions are marked done and
    rewarded 0 (they do not exist in an online episode). Returns arrays of length T: reward, stage (after the
    step), stage_reached, reached_last, success, terminal."""
    machine = StageMachine(subgoals, cfg)
    tracks, env_success = np.asarray(tracks), np.asarray(env_success, bool)
    T = len(env_success)
    if len(tracks) != T + 1:
        raise ValueError(f"tracks must have one entry per state (T+1 = {T + 1}), got {len(tracks)}")
    out = {k: np.zeros(T, dt) for k, dt in (("reward", np.float32), ("stage", np.int32), ("stage_reached", bool),
                                            ("reached_last", bool), ("success", bool), ("terminal", bool))}
    ended = False
    for t in range(T):
        if ended:
            out["terminal"][t] = True
            out["stage"][t], out["reached_last"][t] = machine.k, machine.reached_last
            continue
        s = machine.step(tracks[t + 1], env_success[t])
        out["reward"][t], out["stage"][t], out["stage_reached"][t] = s.reward, s.stage, s.stage_reached
        out["reached_last"][t], out["success"][t], out["terminal"][t] = s.reached_last, s.success, s.terminate
        ended = s.terminate
    return out
