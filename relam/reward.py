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
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from relam.io import without_options_off

REWARD_FUNCTIONS = ("piecewise", "linear", "exponential", "logistic")


@dataclass
class RewardConfig:
    function: str = "piecewise"
    """Shape of f(d): 'piecewise' (paper's best), 'linear', 'exponential' or 'logistic'; all map [0, d_max]
    onto [0, -1] and are clipped beyond d_max. The paper's Fig. 6(b) at ``cpu`` (drawer-open ``relam``, 150k, 3 seeds,
    notebook 08, 2026-12-06): piecewise 96.7 %, exponential 96.7, linear 93.3, logistic 66.7; success follows the
    slope near d = 0 (4, 10, 2 and 0.13 per unit of d), where the stage threshold is decided."""
    d_max: float = 0.5
    """Distance (normalised image units) at which f reaches -1 (ours)."""
    knot: tuple = (0.25, -0.5)
    """Piecewise only: the middle knot (fraction of d_max, value); ours: (0.25 d_max, -0.5), so the slope is
    2/d_max near the goal and 2/(3 d_max) far from it. (0.1, -0.5), slope 5/d_max near the goal, measured on door-open
    ``relam`` (``cpu``, 150k, 12 seeds, 2026-12-06): 63.3 %, the same as the profile's 63.3; not adopted."""
    part_weighting: str = "part"
    """How the K keypoint distances are averaged into d_k: 'keypoint' (each 1/K, Eq. 3 as written) or 'part'
    (ours): each part (the robot, and each object prompt) carries an equal share of d_k, split evenly among its
    keypoints. With K = 4 (3 robot + 1 object points) 'keypoint' gives the object 1/4 of the distance, so a
    policy that puts the arm on a subgoal without moving the object loses little (SPEC §5: "the object's share
    of the distance must not be negligible"); 'part' gives it 1/2. Needs the keypoints' parts
    (``StageMachine(parts=)``, ``ReLAMRewardWrapper(keypoint_parts=)``; unknown parts: the plain mean). Measured at
    ``cpu`` (relam-gt, PPO 150k steps, 3 seeds, final evaluation): drawer-open 80 -> 96.7 %, door-open 10 -> 23.3 %.
    'max' (ours): d_k is the LARGEST single keypoint distance, the quantity the 'max' stage criterion thresholds,
    so the reward always pays for the point that blocks the stage (the 'mean' criterion then thresholds it too;
    with 'part', a hand point 8 px off its subgoal moves d_k by 8/6 px: the robot's half of d_k is shared by its
    3 points). Measured with 'max' (door-open, ``cpu``, 150k, 3 seeds, validation-selected, 2026-12-02): ``relam``
    0 / 0 / 0 %, ``relam-gt`` 0 / 30 / 20 % (final 0 / 40 / 20), 1.4-2.6 stages reached; drawer-open ``relam`` 100 / 60 / 90 % (final 80 / 30 / 90) against 'part''s
    70 / 100 / 90 (final 70 / 100 / 80) on the same machine: no gain over 'part', which stays."""
    criterion: str = "max"
    """'max': stage reached when every keypoint is within delta of its target (default: closes the gap of
    SPEC §5); 'mean': when the mean distance d_k < delta (Eq. 3 read literally; gameable); 'part' (ours): when
    every part's (the robot's, each object's) mean keypoint distance is within delta, so no part can make up for
    another (unknown parts: every keypoint its own part, i.e. 'max'); 'robot-mean' (ours): every OBJECT keypoint
    within delta, and the robot's (part 0) keypoints within delta on average. Why one might: the object's keypoints
    say what the task has done, the arm's only how a redundant arm got there; with 'max' many of door-open's episodes
    stall with the door on its subgoal and one arm point a few px beyond delta (``relam.rl.plan_check.stage_stalls``),
    while the object's points stay strict, so a stage cannot be passed without moving the object (SPEC §5). The
    expert passes 35 % of door-open's generated stages with it (11 % with 'max'), button-press-wall's 87 % (30 %).
    Measured at ``cpu`` (door-open ``relam``, 150k, gSDE, validation-selected, 2026-12-05): 12 seeds 39.2 % against
    the profile's 63.3 (paired -24 points, 95 % interval -62 to +14; 6 seeds at 0 against 2), ``relam-gt`` 6 seeds
    48.3 against 43.3 (final models 35.0 against 40.0); so it stays off (README, stage 05). Unknown parts: 'max'."""
    criterion_generated: str | None = None
    """Stage criterion for GENERATED plans (methods 'relam', 'env-reward'; ours); None (default): ``criterion``.
    Why one might loosen it: with 'max' the scripted expert itself passes few of a generated plan's stages in order
    (``relam.rl.plan_check``, ``cpu`` models, 20 validation states: door-open 11 %, button-press-wall 30 %,
    drawer-open 94 %; with 'part' 48 / 87 / 100 %). Measured with 'part' (PPO door-open relam, 150k, 3 seeds):
    0 / 0 / 0 % success and 1.5-1.8 stages reached, as without it, so it stays off (README, stage 05)."""
    delta: float = 0.04
    """Stage threshold in normalised units (ours: ~5 px at 128 px)."""
    delta_generated: float | str | None = "model"
    """Stage threshold for plans GENERATED by the anticipation model (methods 'relam', 'env-reward'; ours).
    'model' (default): the planning model's own held-out mean subgoal error (its metrics.json), clipped to
    [delta, delta_generated_max]; a number: that threshold; None: ``delta``. Why: a generated subgoal carries the
    model's error, and with the per-point criterion one unreachable subgoal blocks the whole stage sequence; but
    a looser threshold than needed lets a policy pass a subgoal without doing it (drawer-open: the hand passes
    over the handle without hooking it). Measured at ``cpu`` (relam, drawer-open, part weighting, 3 seeds, final
    evaluation): 0.06 -> 20 / 20 / 40 %, 0.04 -> 70 / 50 / 60 %; the 'model' rule gives drawer-open 0.04,
    door-open 0.044, button-press-wall 0.055, PushCube 0.057, PickCube 0.06 (held-out errors 3.7, 5.6, 7.0, 7.2,
    29.7 px at 128 px). Deviation from SPEC §5 (one delta). The ``cpu`` profile gives PickCube 0.06
    (``task_overrides``): its near-object model's mean error (0.047) was too tight for 'max', which tests every
    keypoint (relam 43.3 -> 50.0 %, env-reward 40.0 -> 73.3, 3 seeds; README, stage 06)."""
    delta_generated_max: float = 0.06
    """Upper clip of the 'model' threshold (ours: ~7.7 px at 128 px; the fixed value used before the rule)."""
    stage_bonus: float = 1.0
    """r_stage, paid once per subgoal reached (ours)."""
    object_share: float | None = None
    """With ``part_weighting: part`` (ours): the share of d_k carried by the OBJECTS' keypoints together (split evenly
    among the object parts, each part's among its keypoints); the robot carries the rest. None (default): every part
    an equal share (robot 1/2, one object 1/2). Why one might raise it: before an object moves only the arm's term
    changes, and PPO's advantage normalisation makes its scale matter little there; once the object moves, a larger
    object share makes an arm that reached its subgoal's pose without bringing the object along cost more. The step
    from 'keypoint' (object 1/4 at K = 4) to 'part' (1/2) raised drawer-open and door-open (above). Needs the
    keypoints' parts, with a robot part (0) and at least one object part. Measured with 0.75 on door-open ``relam``
    (``cpu``, 150k, 6 seeds, 2026-12-06): 80 / 40 / 10 / 10 / 0 / 20 = 26.7 % against the profile's 53.3 (paired
    -26.7 points, 95 % interval -62 to +7); the profile's stuck seed 1 reached 40 %, its learners fell. Not adopted."""
    object_progress: float = 0.0
    """Weight w of a potential-based term on the OBJECTS' progress through the whole plan (ours; 0: off). Each step
    adds w (D_prev - D) / D_ref: D is the objects' mean keypoint distance to their place in the plan's LAST subgoal,
    D_ref the plan's own object travel from x^0 there (at least delta), so taking the objects the whole way pays w.
    Why one might: the stage term pays for the objects only as far as the current subgoal takes them, so moving an
    object ahead of the plan (opening the door past the current subgoal's few px) is penalised until the stages
    catch up; this term pays for it at every stage. Needs the keypoints' parts (robot = part 0). Measured with w = 5 on
    door-open ``relam`` (``cpu``, 150k, 12 seeds, 2026-12-06): 60.0 % against the profile's 63.3 (paired -3.3 points,
    95 % interval -31 to +25); not adopted (README, stage 05)."""
    object_lookahead: bool = False
    """Ours (off): each OBJECT keypoint's distance, in d_k and in the stage criterion, is its distance to the
    nearest of its places in the current and all LATER subgoals, not in the current one only. Why one might: the
    stage term charges an object that is ahead of the plan for every step it stays ahead, since it is measured
    against the current subgoal. Door-open's second subgoal has the door ~4.6 px open, and opening it the ~36 px
    the task needs costs reward at every step until the stages catch up. ``object_progress`` pays once for moving
    ahead; this option removes the per-step charge instead. The robot's keypoints still answer to the current
    subgoal, so a stage still needs the arm's pose, and an object pushed back costs as before. Needs the
    keypoints' parts (robot = part 0). Measured on door-open ``relam`` (``cpu``, 150k, 9 seeds, 2026-12-06): 43.3 %
    against the profile's 62.2 on the same seeds (paired -18.9 points, 95 % interval -47 to +8); not adopted."""
    robot_lookahead: bool = False
    """Ours (off): the ROBOT's keypoints, in d_k and in the stage criterion, are measured against the arm's pose in
    whichever of the current and later subgoals it is nearest (the pose as a whole: the mean of its keypoints'
    distances decides). With ``object_lookahead`` too, a state that matches a later subgoal passes the stages up to
    it, one per step. Why one might: an arm that pulls the door along the expert's path is ahead of the current
    subgoal's pose and is charged for it at every step, as the object is. Needs the keypoints' parts. Measured with
    ``object_lookahead`` on door-open ``relam`` (``cpu``, 150k, seeds 0-2, 2026-12-06): 0 / 60 / 10 % against
    80 / 0 / 80, though the scripted expert passes 42.5 % of the generated stages with both (10.8 % without). The trap:
    a later subgoal's arm pose can lie nearer the start than the first one's (door-open's third: 11-12 px against
    14-16), so the reward stops leading the arm to the first subgoal. Not adopted (README, stage 05)."""
    lookahead_horizon: int | None = None
    """With ``object_lookahead`` / ``robot_lookahead`` (ours): how many subgoals after the current one they look at
    (None: all of them). 1 keeps the arm and the objects answering to the current or the NEXT subgoal, so a later
    pose that lies back near the start cannot draw them away from the first stage. Measured with both lookaheads
    and 1 on door-open ``relam`` (``cpu``, 150k, 6 seeds, 2026-12-06): 50.0 % against the profile's 53.3 (paired
    -3.3 points, 95 % interval -28 to +17); not adopted."""
    success_bonus: float = 10.0
    """r_success, paid when the task is accomplished; the episode then ends (ours). 50 instead of 10 (door-open
    ``relam``, ``cpu``, 3 seeds, stopped at 90k steps, 2026-12-02): 10 / 0 / 0 % and 1.3-1.9 stages, as with 10."""
    success_source: str = "env"
    """'env': the simulator's success flag (default); 'subgoals': reaching the last subgoal (gameable; only for
    settings with no success detector)."""
    end_on_success: bool = True
    """End the episode (terminated=True) on success, as the paper does."""
    exp_rate: float = 5.0
    """Exponential only: f = -(1 - exp(-a x)) / (1 - exp(-a)), x = d / d_max."""
    logistic_slope: float = 10.0
    """Logistic only: a sigmoid of slope b centred at d_max / 2, rescaled to [0, -1] on [0, d_max]."""
    task_overrides: dict = field(default_factory=dict)
    """Per-task settings, ``{task: {setting: value}}`` (ours; as ``perception.task_overrides``); ``for_task``
    applies them. The ``cpu`` profile gives PickCube ``delta_generated: 0.06`` (README, stage 06)."""

    def __post_init__(self):
        if self.function not in REWARD_FUNCTIONS:
            raise ValueError(f"unknown reward function {self.function!r}; choose one of {REWARD_FUNCTIONS}")
        if self.part_weighting not in ("keypoint", "part", "max"):
            raise ValueError(f"unknown part_weighting {self.part_weighting!r}; choose 'keypoint', 'part' or 'max'")
        for name in ("criterion", "criterion_generated"):
            value = getattr(self, name)
            if value not in STAGE_CRITERIA and not (name == "criterion_generated" and value is None):
                raise ValueError(f"unknown stage {name} {value!r}; choose one of {STAGE_CRITERIA}")
        if self.success_source not in ("env", "subgoals"):
            raise ValueError(f"unknown success_source {self.success_source!r}; choose 'env' or 'subgoals'")
        dg = self.delta_generated
        if isinstance(dg, str) and dg != "model":
            raise ValueError(f"unknown delta_generated {dg!r}; use 'model', a positive number or None")
        if not (self.d_max > 0 and self.delta > 0 and (dg is None or dg == "model" or dg > 0)
                and self.delta_generated_max >= self.delta):
            raise ValueError(f"d_max, delta and delta_generated must be positive and delta_generated_max >= delta, got "
                             f"d_max={self.d_max}, delta={self.delta}, delta_generated={dg}, "
                             f"delta_generated_max={self.delta_generated_max}")
        h = self.lookahead_horizon
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise ValueError(f"reward.lookahead_horizon must be a whole number >= 1 or null (all later subgoals), got "
                             f"{self.lookahead_horizon!r}")
        share = self.object_share
        if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share < 1):
            raise ValueError(f"reward.object_share must be a number in (0, 1) or null (each part an equal share), got "
                             f"{share!r}")
        if share is not None and self.part_weighting != "part":
            raise ValueError(f"reward.object_share sets the objects' share of d_k under part_weighting 'part', not "
                             f"{self.part_weighting!r}: set part_weighting: part or object_share: null")
        if not (math.isfinite(self.object_progress) and self.object_progress >= 0):
            raise ValueError(f"reward.object_progress must be a number >= 0 (0: off), got {self.object_progress}")
        if self.task_overrides:
            from relam.config import check_task_overrides
            check_task_overrides(self, "reward")

    def for_task(self, task: str | None) -> "RewardConfig":
        """The reward settings of ``task``: ``task_overrides[task]`` applied, no per-task overrides left."""
        from relam.config import section_for_task
        return section_for_task(self, task, "reward")

    def for_plan(self, generated: bool, plan_error: float | None = None) -> "RewardConfig":
        """The config a stage machine uses for a ground-truth (``generated=False``) or a generated plan: ``delta``
        resolved, ``delta_generated`` cleared. ``plan_error``: the planning model's held-out mean subgoal error
        (normalised), needed when ``delta_generated == 'model'``."""
        delta, dg = self.delta, self.delta_generated
        if generated and dg == "model":
            if plan_error is None or not np.isfinite(plan_error):
                raise ValueError("reward.delta_generated='model' needs the anticipation model's held-out subgoal error "
                                 "(metrics.json beside its checkpoint: finish training it, notebook 04), or set "
                                 "reward.delta_generated to a number")
            delta = float(min(max(plan_error, self.delta), self.delta_generated_max))
        elif generated and dg is not None:
            delta = float(dg)
        criterion = self.criterion_generated if generated and self.criterion_generated else self.criterion
        return replace(self, delta=delta, delta_generated=None, criterion=criterion, criterion_generated=None,
                       delta_generated_max=max(self.delta_generated_max, delta))   # the clip of 'model' only

    def settings(self, generated: bool, plan_error: float | None = None) -> dict:
        """The resolved config as saved beside runs and relabelled data (defines whether they are up to date)."""
        d = asdict(self.for_plan(generated, plan_error))
        del d["delta_generated"], d["delta_generated_max"], d["criterion_generated"]   # resolved into delta, criterion
        if d.pop("task_overrides"):
            raise ValueError("RewardConfig.settings is per task: call it on cfg.reward.for_task(task)")
        return without_options_off(d, {("part_weighting",): "keypoint",   # added later: older runs stay current
                                       ("object_share",): None,
                                       ("object_progress",): 0.0, ("object_lookahead",): False,
                                       ("robot_lookahead",): False,
                                       ("lookahead_horizon",): None})


def keypoint_distance(points: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-keypoint Euclidean distances (..., K) between (..., K, 2) arrays."""
    diff = np.asarray(points, np.float64) - np.asarray(target, np.float64)
    return np.sqrt((diff * diff).sum(-1))   # = np.linalg.norm(axis=-1), several times cheaper per env step


STAGE_CRITERIA = ("max", "mean", "part", "robot-mean")


def part_labels(parts, num_keypoints: int) -> np.ndarray:
    """(K,) part of each keypoint, checked against K; None (parts unknown): every keypoint its own part."""
    if parts is None:
        return np.arange(num_keypoints)
    parts = np.asarray(parts).ravel()
    if len(parts) != num_keypoints:
        raise ValueError(f"parts has {len(parts)} entries but the plan has K = {num_keypoints} keypoints")
    return parts


def keypoint_weights(cfg: RewardConfig, parts, num_keypoints: int) -> list[float] | None:
    """Weights of the K keypoint distances in d_k (they sum to 1), or None for the plain mean (Eq. 3).
    ``parts``: (K,) the part (prompt index) each keypoint belongs to; None (parts unknown) counts every keypoint as
    one part, i.e. the plain mean."""
    if cfg.part_weighting in ("keypoint", "max") or parts is None:
        return None
    parts = part_labels(parts, num_keypoints)
    each = {int(l): int(c) for l, c in zip(*np.unique(parts, return_counts=True))}   # part -> its keypoint count
    if cfg.object_share is None:
        share = {l: 1.0 / (len(each) * c) for l, c in each.items()}
    else:
        objects = [l for l in each if l != 0]
        if 0 not in each or not objects:
            raise ValueError(f"reward.object_share needs a robot part (0) and an object part among the keypoints' "
                             f"parts, got parts {sorted(each)}; set reward.object_share: null")
        share = {l: cfg.object_share / (len(objects) * each[l]) for l in objects}
        share[0] = (1.0 - cfg.object_share) / each[0]
    return [share[int(p)] for p in parts]


def reward_function(cfg: RewardConfig):
    """f(d) for the configured shape: vectorised, f(0) = 0, f(d >= d_max) = -1, monotone decreasing."""
    d_max = cfg.d_max
    if cfg.function == "piecewise":
        xs = np.array([0.0, cfg.knot[0] * d_max, d_max])
        ys = np.array([0.0, cfg.knot[1], -1.0])
        if not (0 < cfg.knot[0] < 1 and -1 < cfg.knot[1] < 0):
            raise ValueError(f"piecewise knot must lie inside (0, 1) x (-1, 0), got {cfg.knot}")
        (x0, x1, x2), (y0, y1, y2) = xs.tolist(), ys.tolist()

        def piecewise(d):
            if isinstance(d, float):          # the per-env-step call: plain Python beats np.interp's overhead
                if d <= x1:
                    return y0 + (y1 - y0) * max(d, x0) / x1
                return y1 + (y2 - y1) * (min(d, x2) - x1) / (x2 - x1)
            return np.interp(np.asarray(d, np.float64), xs, ys)
        return piecewise
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
    distance: float          # mean keypoint distance to the current target (Eq. 3; weighted by part if configured)
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
    ``parts`` ((K,) part of each keypoint) weights d_k when ``cfg.part_weighting == 'part'``.
    """

    def __init__(self, subgoals: np.ndarray, cfg: RewardConfig = RewardConfig(), parts=None):
        plan = np.asarray(subgoals, np.float64)
        if plan.ndim != 3 or plan.shape[-1] != 2:
            raise ValueError(f"subgoal plan must be (M+1, K, 2), got shape {plan.shape}")
        self.cfg, self.f = cfg, reward_function(cfg)
        self.targets = plan[1:]
        self.weights = keypoint_weights(cfg, parts, plan.shape[1])
        # the 'part' criterion's groups of keypoint indices; unknown parts: every keypoint alone (= 'max')
        labels = part_labels(parts, plan.shape[1])
        self._groups = [np.flatnonzero(labels == q).tolist() for q in np.unique(labels)]
        if cfg.criterion == "robot-mean" and parts is not None:   # the robot (part 0) as one group, objects per point
            self._groups = [g for g in ([np.flatnonzero(labels == 0).tolist()]
                                        + [[int(i)] for i in np.flatnonzero(labels != 0)]) if g]
        self._target_rows = [t.ravel().tolist() for t in self.targets]   # per-step distances in plain Python
        self._objects = self._object_ref = self._object_prev = None
        needs_parts = [name for name, on in (("object_progress", cfg.object_progress > 0),
                                              ("object_lookahead", cfg.object_lookahead),
                                              ("robot_lookahead", cfg.robot_lookahead)) if on]
        if needs_parts and len(self.targets) and (parts is None or not (labels != 0).any()):
            fix = ", ".join(f"reward.{name}: {'0' if name == 'object_progress' else 'false'}" for name in needs_parts)
            raise ValueError(f"reward.{needs_parts[0]} needs the keypoints' parts with at least one object keypoint "
                             f"(part != 0; pass parts= / keypoint_parts=), or set {fix}")
        if cfg.object_progress > 0 and len(self.targets):
            self._objects = np.flatnonzero(labels != 0)
            self._object_ref = max(self._object_distance(plan[0]), cfg.delta)
        # the keypoints the lookahead options measure against later subgoals (empty: option off)
        self._ahead_objects = np.flatnonzero(labels != 0).tolist() if cfg.object_lookahead else []
        self._ahead_robot = np.flatnonzero(labels == 0).tolist() if cfg.robot_lookahead else []
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

    def _clean(self, points: np.ndarray) -> list[float]:
        """The keypoints as a flat list [x0, y0, x1, ...], non-finite points held at their last finite position."""
        pts = np.asarray(points, np.float64)
        flat = pts.ravel().tolist()
        if all(map(math.isfinite, flat)):    # the common case, kept cheap: this runs every env step
            self._last_finite = pts
            return flat
        finite = np.isfinite(pts).all(-1)
        warnings.warn(f"tracker returned non-finite coordinates for {int((~finite).sum())} keypoint(s); holding "
                      "their last finite position", RuntimeWarning, stacklevel=3)
        held = np.full_like(pts, np.nan) if self._last_finite is None else self._last_finite
        pts = np.where(finite[:, None], pts, held)
        self._last_finite = pts
        return pts.ravel().tolist()

    def distance(self, per_point) -> float:
        """d_k from the K keypoint distances to the current target, as ``part_weighting`` says."""
        if self.cfg.part_weighting == "max":
            return max(per_point)
        w = self.weights
        return sum(per_point) / len(per_point) if w is None else sum(a * b for a, b in zip(w, per_point))

    def criterion_value(self, per_point) -> float:
        """What the stage criterion compares with delta, given the K keypoint distances to the current target: the
        largest ('max'), the largest part mean ('part', 'robot-mean'), or d_k ('mean')."""
        if self.cfg.criterion == "max":
            return max(per_point)
        if self.cfg.criterion in ("part", "robot-mean"):
            return max(sum(per_point[i] for i in g) / len(g) for g in self._groups)
        return self.distance(per_point)

    def _ahead_end(self) -> int | None:
        """End (exclusive) of the subgoals the lookahead options consider from the current one."""
        h = self.cfg.lookahead_horizon
        return None if h is None else self.k + 1 + h

    def _object_distance(self, points) -> float:
        """Mean distance of the object keypoints in ``points`` (K, 2) to their place in the plan's last subgoal."""
        return float(keypoint_distance(np.asarray(points)[self._objects], self.targets[-1][self._objects]).mean())

    def step(self, points: np.ndarray, env_success: bool = False) -> StepReward:
        cfg = self.cfg
        flat = self._clean(points)
        progress = 0.0
        if self._objects is not None:   # potential-based: the first step sets the potential and pays nothing
            d_obj = self._object_distance(np.reshape(flat, (-1, 2)))
            if math.isfinite(d_obj):      # an object point never seen finite: no progress term until it is
                if self._object_prev is not None:
                    progress = cfg.object_progress * (self._object_prev - d_obj) / self._object_ref
                self._object_prev = d_obj
        if self.num_stages == 0:
            dist = dmax = 0.0
            reward, reached = 0.0, False
        else:
            # K distances in plain Python: with K ~ 4 numpy's per-call overhead dominated the wrapper's cost
            t = self._target_rows[self.k]
            per_point = [math.hypot(flat[i] - t[i], flat[i + 1] - t[i + 1]) for i in range(0, len(t), 2)]
            if self._ahead_objects or self._ahead_robot:
                ahead = self._target_rows[self.k:self._ahead_end()]
                gap = lambda i, r: math.hypot(flat[2 * i] - r[2 * i], flat[2 * i + 1] - r[2 * i + 1])  # noqa: E731
                for i in self._ahead_objects:   # an object ahead of the plan: its nearest place from here on
                    per_point[i] = min(gap(i, r) for r in ahead)
                if self._ahead_robot:           # the arm's nearest pose from here on, as a whole
                    nearest = min((sum(dists) / len(dists), dists) for dists in
                                  ([gap(i, r) for i in self._ahead_robot] for r in ahead))[1]
                    for i, d in zip(self._ahead_robot, nearest):
                        per_point[i] = d
            per_point = [d if math.isfinite(d) else cfg.d_max for d in per_point]
            dmax = max(per_point)
            dist = self.distance(per_point)
            reward = float(self.f(dist))
            crit = dist if cfg.criterion == "mean" else self.criterion_value(per_point)
            reached = crit < cfg.delta and not self.reached_last
        reward += progress
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


def env_reward_signal(dense, success, success_bonus: float, dense_max: float = 1.0) -> np.ndarray:
    """The env-reward baselines' signal (methods 'env-reward' of PPO and IQL; ours): the simulator's dense reward
    divided by its largest value (``Task.dense_reward_max``: ManiSkill 1, Meta-World 10) and shifted to [-1, 0]
    like f, plus ReLAM's success bonus; the episode ends at success as with ReLAM's reward (SPEC §5: the paper's
    baselines get rewards "in the same way"). Why not the dense reward as is: it is positive in every step and
    episodes end at success, so every step NOT taken after success is reward lost, and IQL learnt to avoid
    success: 0 % in all 6 ``cpu`` runs (PushCube, PickCube x 3 seeds), episodes running to the time limit with
    twice the env return of the ReLAM policies."""
    dense = np.asarray(dense, np.float32) / np.float32(dense_max)
    return dense - 1.0 + np.float32(success_bonus) * np.asarray(success, np.float32)


def relabel(tracks: np.ndarray, subgoals: np.ndarray, env_success: np.ndarray,
            cfg: RewardConfig = RewardConfig(), parts=None) -> dict:
    """Rewards of a recorded trajectory (SPEC §7): ``tracks`` (T+1, K, 2) keypoints at every state (normalised),
    ``env_success`` (T,) the success flag after each action. Transition t (state t -> t+1) is rewarded on the
    keypoints of state t+1. After a success that ends the episode the remaining transitions are marked done and
    rewarded 0 (they do not exist in an online episode). Returns arrays of length T: reward, stage (after the
    step), stage_reached, reached_last, success, terminal. ``parts`` as in ``StageMachine``."""
    machine = StageMachine(subgoals, cfg, parts)
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
