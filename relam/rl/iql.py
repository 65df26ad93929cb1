"""Offline ReLAM with IQL on ManiSkill (paper §4.1, App. A.4; SPEC §7).

OfflineRL-Kit (the paper's library) is not on PyPI; d3rlpy (maintained, on PyPI, has IQL with the same
hyper-parameters: expectile, inverse temperature beta, soft target updates) is used instead.

Methods: ``relam`` (rewards relabelled with generated subgoals), ``relam-gt`` (ground-truth keypoint subgoals) and
``env-reward`` (the simulator's dense reward in ReLAM's form, ``env_reward_signal``; same observation, subgoals from
the anticipation model). Learners: ``iql`` (the paper's, the default here and in the ``paper`` profile; the
``cpu`` and ``smoke`` profiles use ``awr-mc``, see ``IQLConfig.learner``), ``filtered-bc`` (ours, an option: clone
the trajectories with the highest return under the method's reward; ``keep_mask``) and ``awr-mc`` (ours, an option:
advantage-weighted cloning with Monte-Carlo returns, ``relam.rl.mc_awr``). Observation
(keypoint-only variant, the CPU default): current keypoints, subgoal, their difference and proprioception, exactly
the inputs of the PPO keypoint policy. Evaluation runs in the simulator with online planning and tracking (the
ReLAM wrapper) and counts the simulator's success flag. Run directories as in ``relam.rl.ppo``:
``results/<profile>/runs/<task>/<method>/seed<k>/`` with config.json, train.csv (d3rlpy losses per epoch),
eval.csv, checkpoint.d3 + state.json (every evaluation; a rerun resumes), model.d3 and results.json ('awr-mc':
checkpoint.pt and model.pt, ``relam.rl.mc_awr.load_policy``).
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from relam.io import append_csv_row, atomic_path, atomic_write_text, truncate_csv_rows
from relam.reward import env_reward_signal
from relam.rl.runs import (EVAL_SEED_OFFSET, begin_run, evaluate_policy, evaluate_with_validation, grid,
                           run_dir_of, run_one_main, selected_index)

METHODS = ("relam", "relam-gt", "env-reward")
LEARNERS = ("iql", "filtered-bc", "awr-mc")
IQL_ONLY = ("tau", "expectile", "temperature")   # settings of the TD learner, not of the cloning learners
MC_ONLY = ("mc_beta", "value_steps", "mc_dropout", "mc_chunk", "mc_members", "mc_ema")
TRAJECTORY_FILTERS = ("none", "successful")


@dataclass
class IQLConfig:
    tasks: list[str] = field(default_factory=lambda: ["PushCube", "PickCube"])
    """ManiSkill tasks with offline control datasets (SPEC §7)."""
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    """Reward sources: 'relam', 'relam-gt', 'env-reward'."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    """Training seeds."""
    epochs: int = 50
    """Epochs (paper: 50)."""
    steps_per_epoch: int = 2000
    """Gradient steps per epoch (paper: 2000)."""
    batch_size: int = 64
    """Minibatch (paper: 64)."""
    gamma: float = 0.99
    """Discount (paper)."""
    tau: float = 0.005
    """Target network soft update (paper)."""
    expectile: float = 0.7
    """Expectile of the value loss (paper)."""
    temperature: float = 3.0
    """Inverse temperature beta of advantage-weighted regression (paper)."""
    max_weight: float = 100.0
    """Clip of exp(beta * A) (d3rlpy default)."""
    learning_rate: float = 3e-4
    """Actor and critic learning rate (ours)."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """MLP hidden layers of actor, critics and value (ours)."""
    eval_every_epochs: int = 5
    """Evaluate and checkpoint every this many epochs (and at the end)."""
    eval_episodes: int = 10
    """Simulator episodes per evaluation, from held-out initial states."""
    validation_episodes: int = 0
    """Checkpoint selection (ours, as ``ppo.validation_episodes``; the paper reports final policies). At every
    evaluation the policy also plays this many VALIDATION initial states (task seeds 3_000_000+, disjoint from the
    evaluation states); the run reports the evaluation of the checkpoint that scored best on them (ties: the later),
    saved as ``selected.pt`` / ``selected.d3``. 0 (the default): off, the run reports its final model. A policy
    chosen by playing it in the simulator is no longer purely offline, so this is an option of its own, reported
    beside the final model's success (``final_eval``)."""
    reeval_episodes: int = 0
    """After training (``reevaluate_grid``, notebook 06): play each finished run's reported model on this many
    evaluation states, the first ``eval_episodes`` of which are the run's own (ours; 0: off). Not part of a run's
    definition (its config.json). Why: 10 episodes per seed leave a standard error of ~15 points per run; PickCube
    ``relam`` at ``cpu`` read 60 / 60 / 30 % on its 10 states and 34 / 76 / 70 % on 50 (2026-12-04, README)."""
    anticipation_run: str = "task"
    """Which anticipation model plans for 'relam' and 'env-reward': 'task' (per-task model) or 'multitask'."""
    observation: str = "keypoints"
    """'keypoints' (keypoints, subgoal, difference, proprio; the CPU default) or 'pixels' (the paper's: the RGB
    frame through a 3-layer CNN + that vector through an MLP)."""
    image_size: int = 64
    """'pixels' only: frames are block-averaged to this size (128 -> 64 keeps a 100-trajectory dataset < 1 GB)."""
    workers: int = 1
    """Runs trained in parallel processes (one core each)."""
    learner: str = "iql"
    """'iql' (the paper's), 'filtered-bc' (ours, an option: behaviour cloning of the trajectories whose return
    under the method's reward is in the top ``keep_fraction``, the %BC of Chen et al. 2021; see ``keep_mask``) or
    'awr-mc' (ours: cloning weighted by Monte-Carlo advantages, ``relam.rl.mc_awr``; uses ``gamma``,
    ``max_weight``, ``mc_beta``, ``value_steps``, ``mc_dropout``, ``mc_chunk``). 'awr-mc' is the ``cpu`` profile's
    learner, a deviation from the paper: on the ``cpu`` data (50 expert + 50 noisy trajectories, 40k steps, 3 seeds, final
    evaluation) IQL gave PushCube relam / relam-gt / env-reward 16.7 / 33.3 / 23.3 % and 'awr-mc' 96.7 / 63.3 / 90.0 %;
    PickCube 0 / 10.0 / 0 against 0 / 16.7 / 3.3 %."""
    keep_fraction: float = 0.5
    """'filtered-bc' only: share of trajectories kept, ranked by their return under the method's reward."""
    subgoal_lift: bool = False
    """Ours (``relam.rl.lift``): append ``10 * (lifted subgoal - end effector)`` to the keypoint observation, where the
    lift is a regressor robot keypoints -> end-effector xyz fitted on every transition of the run's dataset (kept
    in ``lift.pt`` beside the model). It tells the policy where its end effector should go in 3-D, which one
    camera's 2-D subgoal says only through the arm's pose (PickCube's goal depth, README stage 06). Off in every
    profile: at ``cpu`` (with the trajectory filter, 3 seeds, 40k) PickCube relam-gt 56.7 -> 53.3 % (50 states
    63.3 -> 58.7 %) and PushCube relam-gt / env-reward 96.7 / 100 -> 86.7 / 90.0 %, though validation probes had
    shown PickCube 65 / 55 -> 75 / 80 % (seeds 0 / 1)."""
    trajectory_filter: str = "none"
    """Which trajectories any learner trains on (ours; the paper uses all): 'none' (all) or 'successful' (those that
    earned the success bonus, i.e. whose simulator success flag was ever 1: the bonus that every method's reward,
    ReLAM's and the env's, pays). See ``success_mask``. The ``cpu`` profile's setting, because MC-AWR's weighting lets
    PickCube's failing noisy trajectories (57 % of its transitions) through, while the top-half filter that stops them
    also drops PushCube's useful successful noisy ones (README, stage 06). Measured at ``cpu`` (awr-mc, 3 seeds, 40k):
    PickCube relam-gt 43.3 -> 56.7 % (50 states: 48.0 -> 63.3 %), PushCube relam / relam-gt / env-reward
    93.3 / 100 / 93.3 -> 93.3 / 96.7 / 100 %; PickCube with generated plans stays at ~0."""
    goal_observation: bool = False
    """Ours (a reading of the paper): the keypoint observation also carries the task's goal position, ManiSkill's
    ``goal_pos`` (``Task.goal_of_state``), which ManiSkill's own ``rgb`` observation gives a policy beside the image
    (its goal markers are hidden from the cameras). PickCube's goal is a random point in the air; one camera's 2-D
    subgoals fix it only to ~5 cm along the view (README stage 06), and the paper's image-only baselines reach
    68-79 % there, which one view alone cannot give. Every method observes it, so the reward sources stay compared
    on equal terms. See README stage 06 for what it measured."""
    keypoint_depth: bool | str = False
    """Ours: the keypoint observation also carries each keypoint's camera depth (True: metres, camera-frame z), what
    an RGB-D camera reads under the tracked pixel, or ('xyz') the keypoint's 3-D position in the world frame, that
    depth lifted through the camera's known pose (the 'sim' tracker gives both exactly; other trackers have none,
    which is an error). Why: one camera's 2-D keypoints leave a point's position along its view ray open. On PickCube
    (``cpu``, ``relam``, 50 states) the failed grasps closed the gripper 1.5-4 cm off the cube towards the camera,
    where the gripper and the cube line up in the image; the successful ones within ~1 cm. 'xyz' in the ``cpu`` and
    ``smoke`` profiles: measured (PickCube ``relam``, 3 seeds, 100k, final models, 100 states 1 000 000-049 and
    1 000 100-149) 69.3 -> 87.0 % (Table 4's 10 states 50.0 -> 76.7); the camera depth alone (True) 69.0, one seed
    falling to 52 (README stage 06)."""
    mc_beta: float = 1.0
    """'awr-mc' only: inverse temperature of the weights exp(beta * A / std(A)) (0 = plain cloning of all data)."""
    value_steps: int = 5000
    """'awr-mc' only: minibatches (of 256) regressing V on the Monte-Carlo returns before cloning starts."""
    mc_dropout: float = 0.1
    """'awr-mc' only: dropout in the policy's hidden layers (ours; without it the policy overfits late, see
    ``relam.rl.mc_awr``)."""
    subgoal_observation: bool | str = True
    """Whether the policy observes the current subgoal (and its difference to the keypoints) beside the keypoints
    and state: True (the paper's subgoal-conditioned policy), 'objects' (ours: only the OBJECT keypoints' subgoal;
    the robot keypoints' subgoal entries are zero, so the vector keeps its layout; ``observed_subgoal``) or False
    (ours): the plan then acts on the policy only through the relabelled reward, i.e. the advantage weights. Why
    False: the expert itself does not pass PickCube's GENERATED subgoals (on the ``cpu`` offline data half of the
    successful trajectories never passed the first one, before 2026-12-03), so the policy sees a subgoal that says
    little about where it is in the task. True in every profile: on PickCube (ablation ``no-subgoal-obs``, chunks of
    4, 3 seeds, 40k, final models) ``relam`` 33.3 -> 50.0 %, ``env-reward`` 40.0 -> 56.7, but ``relam-gt``
    73.3 -> 53.3 (README stage 06)."""
    subgoal_observation_generated: bool | str | None = None
    """``subgoal_observation`` for GENERATED plans (methods 'relam' and 'env-reward'; ours); None (the default):
    ``subgoal_observation``. Why 'objects' for them: a generated plan's robot part is its imprecise part (PickCube:
    the grasp subgoal's robot keypoints 4-7 px off, the cube's ~3 px) and a policy conditioned on it learns to follow
    an arm pose its data did not take, while the object's subgoal says where the object must go and the current
    keypoints still show the arm. Measured at ``cpu`` (2026-12-05, 40k, final models, 100 states 1 000 000-049 and
    1 000 100-149): PickCube ``relam`` over 6 seeds 61.0 -> 67.7 % (worst seed 41 -> 61), ``env-reward`` (3 seeds)
    70.0 -> 76.0, PushCube ``relam`` 94.3 -> 96.3; at the 100k steps of the profile since (3 seeds) PickCube ``relam``
    74.0 -> 76.3. Ground-truth plans are exact, and there the robot part is worth
    keeping: PickCube ``relam-gt`` (3 seeds) with 'objects' 64.0 % against 84.3 (README stage 06)."""
    relative_goal: bool = False
    """Ours: the keypoint observation also carries, for each OBJECT keypoint, the goal minus its 3-D position and its
    3-D position minus the end effector's (``relative_features``; 6 entries per object keypoint, appended last). It
    reads them off the state, so it needs ``goal_observation`` and ``keypoint_depth: xyz``. Why: the cloned policy
    must otherwise learn these differences itself from ~130 successful trajectories, and PickCube's policies fail
    most where the goal is high and far (README, stage 06). On in the ``cpu`` and ``smoke`` profiles: measured (100k,
    final models; Table 4's 10 states / the 50 states 1 000 000-049) PickCube ``relam`` 66.7 -> 90.0 / 75.7 -> 84.7 %
    over 6 seeds, ``relam-gt`` 83.3 -> 86.7 / 88.0 -> 91.3, ``env-reward`` 76.7 -> 93.3 / 82.7 -> 86.7; PushCube held
    (``relam`` 96.7 -> 100 / 90.7 -> 90.0; README stage 06)."""
    actor_dropout: float = 0.0
    """'iql' only: dropout in the actor's hidden layers (d3rlpy's ``VectorEncoderFactory(dropout_rate=...)``; the
    critics and the value net keep none). 0: none (SPEC §7 lists no dropout). The IQL paper (Kostrikov et al. 2021)
    puts 0.1 on its policy for Franka Kitchen and Adroit, its tasks of few demonstrations; 'awr-mc' needed its
    ``mc_dropout`` for the same reason (its policy overfits late without it, README stage 06). Measured with 0.1
    (``cpu`` otherwise, 100k, final models, Table 4's 10 states / 50 states; 2026-12-07): PushCube ``relam`` 65.0 /
    72.0 (seeds 0-1) -> 93.3 / 84.7 % (seeds 0-2; 'awr-mc' 100 / 90.0), PickCube ``relam`` 80.0 / 73.0 -> 83.3 /
    72.0 ('awr-mc' 90.0 / 84.0); not the profile's (docs/experiments.md)."""
    mc_chunk: int = 1
    """'awr-mc' only (ours, after ACT): the policy predicts the next ``mc_chunk`` actions and acts by temporal
    ensembling of the chunks (``relam.rl.mc_awr.TemporalEnsemble``); 1: one action (the default here, and the
    ``no-chunks`` ablation). 4 in the ``cpu`` and ``smoke`` profiles: on PickCube (3 seeds, 40k, final models) chunks
    of 4 lift ``relam-gt`` from 53.3 to 73.3 % and leave ``relam`` (33.3) and ``env-reward`` (40.0) where they were;
    on PushCube all three methods stay at 100 % (README stage 06)."""
    mc_members: int = 1
    """'awr-mc' only (ours): the policy is an ensemble of this many MLPs, each started from its own weights and fed
    its own minibatches, acting on the mean of their actions (``relam.rl.mc_awr._EnsembleNet``; the value net stays
    one). Why: cloning from ~130 successful trajectories leaves each policy with errors of its own (PickCube's seeds
    differ by up to 20 points on the same 50 states), and averaging policies cancels what they do not share.
    1: one policy (runs made before the option keep their config), every profile's. Measured with 3 (PickCube
    ``relam``, before ``keypoint_depth``, 3 seeds, 100k, 100 states): 69.3 -> 72.7 % at ~1.8x the training time."""
    mc_ema: float = 0.0
    """'awr-mc' only (ours): the policy that acts (evaluation, ``model.pt``) is an exponential moving average of the
    trained weights with this decay per gradient step (as diffusion_policy's EMA model); 0: off, the trained
    weights act. Why one might: the final weights of a cloned policy move between evaluations (PickCube ``relam``'s
    10-state score swings 60-90 % over its last 40k steps); an average over the last ~1/(1-decay) steps is steadier.
    Measured with 0.9999 (PickCube ``relam``, ``cpu`` with ``keypoint_depth: xyz``, 3 seeds, 100k, final models;
    Table 4's 10 states / states 1 000 000-049 / 1 000 100-149): 70/80/96, 90/84/96, 70/80/92 against 60/74/96,
    90/82/94, 80/82/94 without, i.e. 76.7 -> 76.7 on the 10 states, 87.0 -> 88.0 % over the 100: no gain beyond one
    episode in a hundred, so it stays off."""


def flat_observation(keypoints, subgoal, state, with_subgoal=True, relative=None) -> np.ndarray:
    """The keypoint-only observation vector: keypoints 2K, subgoal 2K, subgoal - keypoints 2K, state S; without the
    subgoal (``with_subgoal`` False, ``iql.subgoal_observation: false``) keypoints and state only, (..., 2K + S).
    ``with_subgoal`` may also be a (K,) bool mask of the keypoints whose subgoal is observed (``observed_subgoal``):
    the others' subgoal and difference entries are zero. ``relative`` (a (K,) bool mask of the object keypoints,
    ``relative_objects``) appends their ``relative_features``."""
    kp, st = np.asarray(keypoints, np.float32), np.asarray(state, np.float32)
    extra = [] if relative is None else [relative_features(st, relative)]
    if with_subgoal is False:
        return np.concatenate([kp, st, *extra], -1)
    sg = np.asarray(subgoal, np.float32)
    diff = sg - kp
    if with_subgoal is not True:
        seen = np.repeat(np.asarray(with_subgoal, bool), 2)
        if seen.shape != sg.shape[-1:]:
            raise ValueError(f"subgoal mask has {len(seen) // 2} keypoints but the plan has {sg.shape[-1] // 2}")
        sg, diff = np.where(seen, sg, np.float32(0)), np.where(seen, diff, np.float32(0))
    return np.concatenate([kp, sg, diff, st, *extra], -1)


def relative_features(state, objects) -> np.ndarray:
    """``iql.relative_goal``'s entries (..., 6 * objects): goal - position of each object keypoint (``objects``, a
    (K,) bool mask), then position - end effector of each, all in 3-D. ``state`` is laid out as ``goal_observation``
    with ``keypoint_depth: xyz`` make it: proprioception (end-effector xyz first), goal (3), the K keypoints' xyz."""
    st, objects = np.asarray(state, np.float32), np.asarray(objects, bool)
    k = len(objects)
    if st.shape[-1] < 3 * k + 6:
        raise ValueError(f"a state of {st.shape[-1]} entries cannot hold an end effector, a goal and {k} keypoints' "
                         f"xyz; iql.relative_goal needs iql.goal_observation and iql.keypoint_depth: xyz")
    points = st[..., -3 * k:].reshape(*st.shape[:-1], k, 3)[..., objects, :]
    goal, hand = st[..., -3 * k - 3:-3 * k], st[..., :3]
    flat = points.shape[:-2] + (-1,)
    return np.concatenate([(goal[..., None, :] - points).reshape(flat),
                           (points - hand[..., None, :]).reshape(flat)], -1)


def relative_objects(cfg, task: str):
    """``flat_observation``'s ``relative`` for ``task``: None with ``iql.relative_goal`` off, else the (K,) mask of
    its object keypoints. Refuses settings whose state does not carry what it subtracts."""
    c = cfg.iql
    if not c.relative_goal:
        return None
    if not c.goal_observation or c.keypoint_depth != "xyz":
        raise ValueError(f"iql.relative_goal subtracts the goal and the keypoints' 3-D positions in the state, but "
                         f"goal_observation is {c.goal_observation} and keypoint_depth {c.keypoint_depth!r}: set "
                         f"iql.goal_observation: true and iql.keypoint_depth: xyz, or relative_goal: false")
    if c.subgoal_lift:
        raise ValueError("iql.subgoal_lift reads the observation's last entries as keypoints and proprioception; "
                         "it cannot be combined with iql.relative_goal: switch one of them off")
    from relam.rl.ppo import keypoint_parts
    return keypoint_parts(cfg, task) != 0


def subgoal_view(c: IQLConfig, method: str):
    """The ``subgoal_observation`` that holds for ``method``'s plans: ``subgoal_observation_generated`` for the
    generated ones ('relam', 'env-reward') where it is set."""
    generated = _source(method)[0] != "relam-gt"
    return c.subgoal_observation_generated if generated and c.subgoal_observation_generated is not None \
        else c.subgoal_observation


def observed_subgoal(cfg, task: str, method: str):
    """``flat_observation``'s ``with_subgoal`` for ``method`` on ``task`` (``subgoal_view``): True, False, or for
    'objects' the (K,) mask of ``task``'s object keypoints (robot keypoints, part 0, are not observed)."""
    value = subgoal_view(cfg.iql, method)
    if value is True or value is False:
        return value
    if value != "objects":
        raise ValueError(f"unknown subgoal observation {value!r} for {method!r} (iql.subgoal_observation / "
                         f"subgoal_observation_generated); choose true, false or 'objects'")
    from relam.rl.ppo import keypoint_parts
    return keypoint_parts(cfg, task) != 0


def downscale(images: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W, 3) uint8 -> (..., 3 * size * size) float32 in [0, 1], channels first, by block averaging."""
    images = np.asarray(images)
    h = images.shape[-3]
    if h % size:
        raise ValueError(f"iql.image_size {size} must divide the frame size {h} (e.g. 64 or 32 for 128 px frames)")
    f = h // size
    x = images.reshape(images.shape[:-3] + (size, f, size, f, 3)).mean((-4, -2), dtype=np.float32) / 255.0
    return np.moveaxis(x, -1, -3).reshape(images.shape[:-3] + (-1,))


def pixel_encoder_factory(image_size: int, hidden: int):
    """A d3rlpy encoder factory for 'pixels' observations: CNN over the image part (``relam.rl.hrl.image_cnn``),
    MLP over the keypoint part (+ the action for Q-functions), joined by a linear layer. Calling it registers the
    factory with d3rlpy: do so before ``d3rlpy.load_learnable`` of a 'pixels' model in a new process."""
    global _PIXEL_FACTORY
    if _PIXEL_FACTORY is None:
        from dataclasses import dataclass as _dc

        import torch
        from d3rlpy.models.encoders import EncoderFactory, register_encoder_factory
        from d3rlpy.models.torch.encoders import Encoder, EncoderWithAction
        from torch import nn

        from relam.rl.hrl import image_cnn

        class _Body(nn.Module):
            def __init__(self, obs_dim, size, hidden, action_size=0):
                super().__init__()
                self.n_img, self.size = 3 * size * size, size
                self.cnn = image_cnn(3, size, size, hidden)
                self.mlp = nn.Sequential(nn.Linear(obs_dim - self.n_img + action_size, hidden), nn.ReLU())
                self.head = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.ReLU())

            def features(self, x, action=None):
                img = x[:, :self.n_img].reshape(-1, 3, self.size, self.size)
                vec = x[:, self.n_img:] if action is None else torch.cat([x[:, self.n_img:], action], -1)
                return self.head(torch.cat([self.cnn(img), self.mlp(vec)], -1))

        class PixelKeypointEncoder(Encoder):
            def __init__(self, *a):
                super().__init__()
                self.body = _Body(*a)

            def forward(self, x):
                return self.body.features(x)

        class PixelKeypointEncoderWithAction(EncoderWithAction):
            def __init__(self, *a):
                super().__init__()
                self.body = _Body(*a)

            def forward(self, x, action):
                return self.body.features(x, action)

        @_dc()
        class PixelKeypointEncoderFactory(EncoderFactory):
            image_size: int = 64
            hidden: int = 256

            def create(self, observation_shape):
                return PixelKeypointEncoder(observation_shape[0], self.image_size, self.hidden)

            def create_with_action(self, observation_shape, action_size, discrete_action=False):
                return PixelKeypointEncoderWithAction(observation_shape[0], self.image_size, self.hidden, action_size)

            @staticmethod
            def get_type() -> str:
                return "relam_pixel_keypoint"

        register_encoder_factory(PixelKeypointEncoderFactory)   # d3rlpy.load_learnable needs it registered
        _PIXEL_FACTORY = PixelKeypointEncoderFactory
    return _PIXEL_FACTORY(image_size=image_size, hidden=hidden)


_PIXEL_FACTORY = None


def offline_images(cfg, task: str, npz_path: Path | str, size: int) -> np.ndarray:
    """Per relabelled transition, the downscaled frame of its state (from the offline dataset's videos)."""
    from relam.data.demos import offline_path
    from relam.data.store import EpisodeSet

    with np.load(npz_path) as d:
        episode, t = d["episode"], d["t"]
    out = np.empty((len(episode), 3 * size * size), np.float32)
    with EpisodeSet(offline_path(cfg, task)) as ds:
        for e in np.unique(episode):
            rows = np.flatnonzero(episode == e)
            out[rows] = downscale(ds[int(e)].frames[t[rows]], size)
    return out


def _source(method: str) -> tuple[str, str]:
    """(relabelled file, reward column) of a method; the file's plans are also the ones evaluation uses."""
    if method == "relam":
        return "relam", "reward"
    if method == "relam-gt":
        return "relam-gt", "reward"
    if method == "env-reward":
        return "relam", "env_reward"
    raise ValueError(f"unknown IQL method {method!r}; choose from {METHODS}")


def _rewards(d, reward_key: str, success_bonus: float) -> np.ndarray:
    if reward_key == "env_reward":
        return env_reward_signal(d["env_reward"], d["success"], success_bonus)
    return d[reward_key].astype(np.float32)


def keep_mask(npz_path: Path | str, reward_key: str, fraction: float, success_bonus: float = 10.0) -> np.ndarray:
    """Learner 'filtered-bc': per transition, whether its trajectory's return (undiscounted sum of the method's
    reward) is among the top ``fraction`` of trajectories (ties broken by trajectory index). Why this learner
    exists: IQL on these small datasets behaves like cloning ALL the data (README, stage 06), while the relabelled
    returns do rank the trajectories: the top half is 84-98 % expert trajectories on the ``cpu`` data."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"iql.keep_fraction {fraction} must be in (0, 1]: the share of trajectories to clone")
    with np.load(npz_path) as d:
        episode, rewards = d["episode"], _rewards(d, reward_key, success_bonus)
    ids, inverse = np.unique(episode, return_inverse=True)
    returns = np.zeros(len(ids))
    np.add.at(returns, inverse, rewards)
    n_keep = max(1, int(round(fraction * len(ids))))
    kept = np.argsort(-returns, kind="stable")[:n_keep]
    return np.isin(inverse, kept)


def success_mask(npz_path: Path | str) -> np.ndarray:
    """``iql.trajectory_filter: successful``: per transition, whether its trajectory ever reached the simulator's
    success (and so earned the success bonus). Unlike ``keep_mask`` it keeps every successful trajectory, however
    slow or noisy: PushCube's successful noisy trajectories are 40 % of its data and help, PickCube's failing ones
    (57 %) are what its advantage weighting cannot filter."""
    with np.load(npz_path) as d:
        episode, success = d["episode"], d["success"].astype(bool)
    ids, inverse = np.unique(episode, return_inverse=True)
    ok = np.zeros(len(ids), bool)
    np.logical_or.at(ok, inverse, success)
    if not ok.any():
        raise ValueError(f"no trajectory of {npz_path} reaches the simulator's success, so iql.trajectory_filter "
                         f"'successful' would leave nothing to train on; collect more trajectories "
                         f"(offline.n_expert) or set iql.trajectory_filter: none")
    return ok[inverse]


def _check_choice(c: IQLConfig, name: str, choices: tuple[str, ...]) -> None:
    if getattr(c, name) not in choices:
        raise ValueError(f"unknown iql.{name} {getattr(c, name)!r}; choose from {choices}")


def training_mask(c: IQLConfig, npz_path: Path | str, reward_key: str, success_bonus: float) -> np.ndarray | None:
    """The transitions a run trains on (None: all): those of the trajectories that pass ``trajectory_filter`` and,
    for 'filtered-bc', are in the top ``keep_fraction`` by return (ranked over ALL trajectories)."""
    _check_choice(c, "trajectory_filter", TRAJECTORY_FILTERS)
    masks = []
    if c.trajectory_filter == "successful":
        masks.append(success_mask(npz_path))
    if c.learner == "filtered-bc":
        masks.append(keep_mask(npz_path, reward_key, c.keep_fraction, success_bonus))
    return np.logical_and.reduce(masks) if masks else None


def transitions(npz_path: Path | str, reward_key: str, images: np.ndarray | None = None,
                success_bonus: float = 10.0, keep: np.ndarray | None = None, with_subgoal=True,
                relative=None) -> dict:
    """The learners' arrays of a relabelled file (``relam.rl.relabel``): observations, actions, rewards,
    terminals, timeouts, episode (trajectory id) and noisy (whether the trajectory is a noisy one). ``images``
    (per transition, from ``offline_images``) makes 'pixels' observations. ``reward_key`` 'env_reward' gives
    ``env_reward_signal``. ``keep`` (a transition mask of whole trajectories, ``keep_mask``) selects the rows.
    ``with_subgoal`` and ``relative``: as ``flat_observation``'s."""
    with np.load(npz_path) as d:
        obs = flat_observation(d["keypoints"], d["subgoal"], d["state"], with_subgoal, relative)
        if images is not None:
            obs = np.concatenate([images, obs], -1)
        episode = d["episode"] if "episode" in d else np.zeros(len(obs), int)
        cols = {"observations": obs, "actions": d["action"], "rewards": _rewards(d, reward_key, success_bonus),
                "terminals": d["terminal"].astype(np.float32), "timeouts": d["timeout"].astype(np.float32),
                "episode": episode, "noisy": d["noisy"][episode] if "noisy" in d else np.zeros(len(obs), bool)}
    return cols if keep is None else {k: v[keep] for k, v in cols.items()}


def build_dataset(npz_path: Path | str, reward_key: str, images: np.ndarray | None = None,
                  success_bonus: float = 10.0, keep: np.ndarray | None = None):
    """d3rlpy MDPDataset of ``transitions``."""
    return _mdp_dataset(transitions(npz_path, reward_key, images, success_bonus, keep))


def _mdp_dataset(t: dict):
    import d3rlpy
    return d3rlpy.dataset.MDPDataset(
        observations=t["observations"], actions=t["actions"], rewards=t["rewards"], terminals=t["terminals"],
        timeouts=t["timeouts"], action_space=d3rlpy.constants.ActionSpace.CONTINUOUS)


def _check_actor_dropout(c: IQLConfig) -> None:
    if not 0.0 <= c.actor_dropout < 1.0 or (c.actor_dropout and c.learner != "iql"):
        raise ValueError(f"iql.actor_dropout {c.actor_dropout} must be in [0, 1) and applies to learner 'iql' only "
                         f"(this run's is {c.learner!r}; 'awr-mc' has its own iql.mc_dropout): set it to 0 or "
                         f"iql.learner: iql")
    if c.actor_dropout and c.observation != "keypoints":
        raise ValueError("iql.actor_dropout is built for the keypoint observation's MLP; the 'pixels' encoder has "
                         "no dropout: set iql.actor_dropout: 0 or iql.observation: keypoints")


def make_algo(c: IQLConfig, seed: int):
    import d3rlpy
    d3rlpy.seed(seed)
    if c.observation == "pixels":
        enc = pixel_encoder_factory(c.image_size, c.hidden[-1])
    elif c.observation == "keypoints":
        enc = d3rlpy.models.encoders.VectorEncoderFactory(hidden_units=list(c.hidden))
    else:
        raise ValueError(f"unknown iql.observation {c.observation!r}; choose 'keypoints' or 'pixels'")
    if c.learner == "filtered-bc":   # deterministic policy: the greedy IQL actor is its mean, too
        return d3rlpy.algos.BCConfig(batch_size=c.batch_size, learning_rate=c.learning_rate,
                                     encoder_factory=enc).create(device="cpu:0")
    if c.learner != "iql":
        raise ValueError(f"unknown iql.learner {c.learner!r}; choose from {LEARNERS}")
    _check_actor_dropout(c)
    actor_enc = replace(enc, dropout_rate=c.actor_dropout) if c.actor_dropout else enc
    return d3rlpy.algos.IQLConfig(
        actor_learning_rate=c.learning_rate, critic_learning_rate=c.learning_rate, batch_size=c.batch_size,
        gamma=c.gamma, tau=c.tau, expectile=c.expectile, weight_temp=c.temperature, max_weight=c.max_weight,
        actor_encoder_factory=actor_enc, critic_encoder_factory=enc, value_encoder_factory=enc,
    ).create(device="cpu:0")


def evaluate(algo, env, episodes: int, image_size: int | None = None, seed_offset: int = EVAL_SEED_OFFSET,
             with_subgoal=True, per_episode: bool = False, relative=None) -> dict:
    """Greedy IQL policy on held-out initial states from task seed ``seed_offset`` on
    (``relam.rl.runs.evaluate_policy``); ``image_size`` for a 'pixels' policy (the env must then yield
    ``obs['image']``); ``with_subgoal`` as the policy was trained (``observed_subgoal``): False without the
    subgoal in its observation, a (K,) mask with only those keypoints' subgoal; ``relative`` as trained
    (``relative_objects``)."""
    def act(obs):
        x = flat_observation(obs["keypoints"], obs["subgoal"], obs["state"], with_subgoal, relative)
        if image_size is not None:
            x = np.concatenate([downscale(np.moveaxis(obs["image"], 0, -1), image_size), x])
        return algo.predict(x[None])[0]
    return evaluate_policy(act, env, episodes, seed_offset=seed_offset, on_reset=getattr(algo, "reset", None),
                           per_episode=per_episode)


def _iql_settings(c: IQLConfig, method: str) -> dict:
    d = asdict(c) | {"tasks": None, "methods": None, "seeds": None, "workers": None}
    del d["reeval_episodes"]           # played after training: does not define a run
    d["subgoal_observation"] = subgoal_view(c, method)   # resolved for the method's plans
    del d["subgoal_observation_generated"]
    if c.trajectory_filter == "none":  # runs made before the filter keep their config
        del d["trajectory_filter"]
    if not c.subgoal_lift:             # runs made before the lift keep their config
        del d["subgoal_lift"]
    if d["subgoal_observation"] is True:   # runs made before the option keep their config
        del d["subgoal_observation"]
    if not c.goal_observation:         # runs made before the option keep their config
        del d["goal_observation"]
    if not c.keypoint_depth:           # runs made before the option keep their config
        del d["keypoint_depth"]
    if not c.relative_goal:            # runs made before the option keep their config
        del d["relative_goal"]
    if not c.validation_episodes:      # runs made before the option keep their config
        del d["validation_episodes"]
    if c.observation == "keypoints":   # pixel-only settings do not define keypoint runs
        del d["observation"], d["image_size"]
    if not c.actor_dropout or c.learner != "iql":   # runs made before the option keep their config
        del d["actor_dropout"]
    if c.learner != "awr-mc":          # runs made before that learner keep their config
        for k in MC_ONLY:
            del d[k]
    if c.learner == "iql":             # runs made before the learner option keep their config
        del d["learner"], d["keep_fraction"]
    elif c.learner == "filtered-bc":   # IQL-only settings do not define a cloning run
        for k in IQL_ONLY + ("gamma", "max_weight"):
            del d[k]
    else:
        for k in IQL_ONLY + ("keep_fraction",):
            del d[k]
        if c.mc_chunk == 1:            # runs made before the option keep their config
            del d["mc_chunk"]
        if c.mc_members == 1:          # runs made before the option keep their config
            del d["mc_members"]
        if not c.mc_ema:               # runs made before the option keep their config
            del d["mc_ema"]
    return d


def run_config(cfg, task: str, method: str, seed: int) -> dict:
    """What defines a run (its config.json): changing any of it starts the run over."""
    from relam.rl.ppo import perception_setting, plan_setting, reward_setting
    env_form = {"env_reward": "dense - 1 + success bonus"} if method == "env-reward" else {}
    return {"task": task, "method": method, "seed": seed, "algo": "iql", **env_form,
            "iql": _iql_settings(cfg.iql, method),
            "reward": reward_setting(cfg, task, method != "relam-gt", cfg.iql.anticipation_run),
            **plan_setting(cfg, task, method, cfg.iql.anticipation_run), **perception_setting(cfg, task),
            "profile": cfg.profile}


class _D3Learner:
    """A d3rlpy algorithm ('iql', 'filtered-bc') behind the interface ``train_run`` uses."""
    ext = ".d3"

    def __init__(self, c: IQLConfig, seed: int, data: dict, checkpoint: Path | None, progress: bool):
        import d3rlpy
        self.c, self.progress = c, progress
        self.dataset = _mdp_dataset(data)
        self.algo = d3rlpy.load_learnable(str(checkpoint), device="cpu:0") if checkpoint else make_algo(c, seed)

    def fit(self, epochs: int) -> list[dict]:
        import d3rlpy
        hist = self.algo.fit(self.dataset, n_steps=epochs * self.c.steps_per_epoch,
                             n_steps_per_epoch=self.c.steps_per_epoch, show_progress=self.progress,
                             save_interval=10 ** 9, logger_adapter=d3rlpy.logging.NoopAdapterFactory())
        return [m for _, m in hist]

    def predict(self, x):
        return self.algo.predict(x)

    def save(self, path):
        self.algo.save(str(path))

    def summary(self) -> dict:
        return {}


class _MCLearner:
    """'awr-mc' (``relam.rl.mc_awr.MCAWR``) behind the same interface."""
    ext = ".pt"

    def __init__(self, c: IQLConfig, seed: int, data: dict, checkpoint: Path | None, progress: bool):
        from relam.rl.mc_awr import MCAWR, mc_returns
        self.c, self.noisy = c, data["noisy"]
        self.algo = MCAWR(data["observations"], data["actions"], mc_returns(data["rewards"], data["episode"], c.gamma),
                          hidden=c.hidden, learning_rate=c.learning_rate, batch_size=c.batch_size, beta=c.mc_beta,
                          max_weight=c.max_weight, value_steps=c.value_steps,
                          image_size=c.image_size if c.observation == "pixels" else None, dropout=c.mc_dropout,
                          seed=seed, chunk=c.mc_chunk, episode=data["episode"], members=c.mc_members,
                          ema=c.mc_ema)
        if checkpoint:
            self.algo.load_state(checkpoint)

    def fit(self, epochs: int) -> list[dict]:
        return [self.algo.fit(self.c.steps_per_epoch) for _ in range(epochs)]

    def predict(self, x):
        return self.algo.predict(x)

    def reset(self):
        self.algo.reset()

    def save(self, path):
        self.algo.save(path)

    def summary(self) -> dict:
        return {"noisy_weight_share": self.algo.weight_share(self.noisy)}


def train_run(cfg, task: str, method: str, seed: int, progress: bool = False) -> dict:
    """Relabel (if needed), train (or resume, or skip) one IQL run and evaluate it in the simulator."""
    import torch

    from relam.rl.env import KEYPOINT_DEPTH
    from relam.rl.lift import LiftedPolicy
    from relam.rl.ppo import make_env, make_planner
    from relam.rl.relabel import dataset_summary, relabel_dataset

    torch.set_num_threads(cfg.torch_threads)  # several threads per run were 5x slower with two runs side by side
    c = cfg.iql
    for name, choices in (("learner", LEARNERS), ("trajectory_filter", TRAJECTORY_FILTERS),
                          ("observation", ("keypoints", "pixels")), ("keypoint_depth", KEYPOINT_DEPTH)):
        _check_choice(c, name, choices)
    _check_actor_dropout(c)
    with_subgoal, relative = observed_subgoal(cfg, task, method), relative_objects(cfg, task)
    if c.subgoal_lift and with_subgoal is not True:
        raise ValueError(f"iql.subgoal_lift adds the lifted (robot) SUBGOAL to the observation, so it needs the whole "
                         f"subgoal observed, but {method!r} observes {subgoal_view(c, method)!r} "
                         f"(iql.subgoal_observation / subgoal_observation_generated); switch one of them off")
    Learner = _MCLearner if c.learner == "awr-mc" else _D3Learner
    run_dir = run_dir_of(cfg, task, method, seed)
    ckpt_path, model_path = run_dir / f"checkpoint{Learner.ext}", run_dir / f"model{Learner.ext}"
    done = begin_run(run_dir, run_config(cfg, task, method, seed),
                     ("checkpoint.d3", "checkpoint.pt", "state.json", "train.csv", "eval.csv", "model.d3",
                      "model.pt", "selected.d3", "selected.pt", "lift.pt"), budget=("iql", "epochs"),
                     final_files=("model.d3", "model.pt"))
    if done is not None:
        return done

    source, reward_key = _source(method)
    planner = make_planner(task, source, cfg, c.anticipation_run)
    data_path = relabel_dataset(cfg, task, source, planner=planner, progress=progress,
                                anticipation_run=c.anticipation_run)
    pixels = c.observation == "pixels"
    images = offline_images(cfg, task, data_path, c.image_size) if pixels else None
    bonus = cfg.reward.for_task(task).success_bonus
    keep = training_mask(c, data_path, reward_key, bonus)
    data = transitions(data_path, reward_key, images, bonus, keep, with_subgoal, relative)
    del images
    if pixels and c.learner != "awr-mc":
        pixel_encoder_factory(c.image_size, c.hidden[-1])   # registered before a checkpoint is loaded
    env = make_env(task, planner, cfg, image_obs=pixels, goal_obs=c.goal_observation,
                   keypoint_depth=c.keypoint_depth)
    lift = _subgoal_lift(c, run_dir, data_path, env, seed) if c.subgoal_lift else None
    if lift is not None:
        data["observations"] = lift.augment(data["observations"])

    state = {"epoch": 0, "evals": []}
    resume = ckpt_path.exists() and (run_dir / "state.json").exists()
    if resume:
        state = json.loads((run_dir / "state.json").read_text())
        for name in ("train.csv", "eval.csv"):  # drop rows written after the checkpoint
            truncate_csv_rows(run_dir / name, state["epoch"])
    else:
        for name in ("train.csv", "eval.csv"):
            (run_dir / name).unlink(missing_ok=True)
    resumed = state["epoch"] > 0
    learner = Learner(c, seed, data, ckpt_path if resume else None, progress)
    policy = learner if lift is None else LiftedPolicy(learner, lift)
    del data
    t0 = time.perf_counter()
    steps_done = 0
    while state["epoch"] < c.epochs:
        n = min(c.eval_every_epochs, c.epochs - state["epoch"])
        for i, metrics in enumerate(learner.fit(n)):
            append_csv_row(run_dir / "train.csv", ["epoch"] + sorted(metrics),
                           [state["epoch"] + i + 1] + [float(metrics[k]) for k in sorted(metrics)])
        state["epoch"] += n
        steps_done += n * c.steps_per_epoch
        res = evaluate_with_validation(
            lambda n, offset: evaluate(policy, env, n, c.image_size if pixels else None, seed_offset=offset,
                                       with_subgoal=with_subgoal, relative=relative),
            c.eval_episodes, c.validation_episodes)
        state["evals"].append({"epoch": state["epoch"], "step": state["epoch"] * c.steps_per_epoch, **res})
        append_csv_row(run_dir / "eval.csv", ["epoch", "step"] + list(res),
                       [state["epoch"], state["epoch"] * c.steps_per_epoch] + list(res.values()))
        with atomic_path(ckpt_path) as tmp:
            learner.save(tmp)
        if c.validation_episodes > 0 and selected_index(state["evals"]) == len(state["evals"]) - 1:
            with atomic_path(run_dir / f"selected{Learner.ext}") as tmp:   # before state.json names it
                shutil.copyfile(ckpt_path, tmp)
        atomic_write_text(run_dir / "state.json", json.dumps(state))
    seconds = time.perf_counter() - t0
    with atomic_path(model_path) as tmp:  # the last checkpoint is the final model
        shutil.copyfile(ckpt_path, tmp)
    final = state["evals"][-1]
    chosen = state["evals"][selected_index(state["evals"])]
    summary = dataset_summary(data_path, keep) | learner.summary() | (
        {} if lift is None else {"lift_mean_error_m": round(lift.fit_error, 4)})
    results = {"task": task, "method": method, "seed": seed, "algo": "iql", "learner": c.learner,
               "steps": c.epochs * c.steps_per_epoch,
               "success_rate": chosen["success_rate"], "last_subgoal_rate": chosen["last_subgoal_rate"],
               "selected_step": chosen["step"], "selected_eval": chosen, "final_eval": final,
               "evals": state["evals"], "dataset": summary,
               "seconds_this_session": round(seconds, 1),
               "train_steps_per_second": round(steps_done / max(seconds, 1e-9), 1), "resumed": resumed}
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    env.close()
    planner.close()
    return results


def _subgoal_lift(c: IQLConfig, run_dir: Path, data_path: Path, env, seed: int) -> "relam.rl.lift.SubgoalLift":
    """The run's ``SubgoalLift`` (``relam.rl.lift.load_or_fit``), fitted on every transition of the relabelled file
    (all trajectories: the lift needs poses, not good actions)."""
    from relam.rl.lift import SubgoalLift, load_or_fit

    def fit():
        with np.load(data_path) as d:
            keypoints, state = d["keypoints"], d["state"]
        return SubgoalLift(np.flatnonzero(np.asarray(env.parts) == 0), env.K, seed=seed).fit(keypoints, state)
    return load_or_fit(run_dir / "lift.pt", fit)


def reeval_key(results_path: Path, episodes: int) -> dict:
    """The key that makes a ``reeval<episodes>.json`` current: the run's ``results.json`` as it was when the file was
    played (a retrained run rewrites it), and the number of states."""
    return {"results_mtime_ns": Path(results_path).stat().st_mtime_ns, "episodes": episodes}


def reevaluate_run(cfg, task: str, method: str, seed: int, episodes: int | None = None) -> dict:
    """The model a FINISHED run reports (``selected`` with validation, else the final one) played on the first
    ``episodes`` (default ``iql.reeval_episodes``) evaluation states, a superset of the run's own. Written to
    ``reeval<episodes>.json`` in the run directory (atomic) and returned from there while the run's results are
    unchanged. Success = the simulator's flag, as in training."""
    from relam.rl.lift import LiftedPolicy
    from relam.rl.ppo import make_env, make_planner
    from relam.rl.relabel import relabel_dataset

    c = cfg.iql
    episodes = c.reeval_episodes if episodes is None else episodes
    if episodes < 1:
        raise ValueError(f"re-evaluation needs episodes >= 1, got {episodes} (set iql.reeval_episodes)")
    run_dir = run_dir_of(cfg, task, method, seed)
    results_path, config_path = run_dir / "results.json", run_dir / "config.json"
    if not results_path.exists() or json.loads(config_path.read_text()) != json.loads(
            json.dumps(run_config(cfg, task, method, seed))):
        raise ValueError(f"{run_dir} is not a finished run of this config; train it first "
                         f"(relam.rl.iql.train_run or notebook 06), then re-evaluate")
    results = json.loads(results_path.read_text())
    out = run_dir / f"reeval{episodes}.json"
    key = reeval_key(results_path, episodes)
    if out.exists():
        cached = json.loads(out.read_text())
        if cached.get("key") == key and "per_episode" in cached:   # files from before 'per_episode' are replayed
            return cached
    pixels = c.observation == "pixels"
    ext = ".pt" if c.learner == "awr-mc" else ".d3"
    selected = run_dir / f"selected{ext}"
    model = selected if c.validation_episodes > 0 and selected.exists() else run_dir / f"model{ext}"
    if c.learner == "awr-mc":
        from relam.rl.mc_awr import load_policy
        policy = load_policy(model)
    else:
        import d3rlpy
        if pixels:
            pixel_encoder_factory(c.image_size, c.hidden[-1])   # registered before the model is loaded
        policy = d3rlpy.load_learnable(str(model), device="cpu:0")
    source = _source(method)[0]
    planner = make_planner(task, source, cfg, c.anticipation_run)
    env = make_env(task, planner, cfg, image_obs=pixels, goal_obs=c.goal_observation,
                   keypoint_depth=c.keypoint_depth)
    try:
        if c.subgoal_lift:
            data_path = relabel_dataset(cfg, task, source, planner=planner, progress=False,
                                        anticipation_run=c.anticipation_run)
            policy = LiftedPolicy(policy, _subgoal_lift(c, run_dir, data_path, env, seed))
        res = evaluate(policy, env, episodes, c.image_size if pixels else None,
                       with_subgoal=observed_subgoal(cfg, task, method), per_episode=True,
                       relative=relative_objects(cfg, task))
    finally:
        env.close()
        planner.close()
    own = results.get("selected_eval") or results["final_eval"]
    res = {"task": task, "method": method, "seed": seed, "model": model.name, **res,
           "own_success_rate": own["success_rate"], "own_episodes": own.get("episodes", c.eval_episodes),
           "key": key}
    atomic_write_text(out, json.dumps(res, indent=2))
    return res


def reevaluate_grid(cfg, progress: bool = True) -> "pd.DataFrame":
    """``reevaluate_run`` for every finished, current run of the profile's grid (``iql.reeval_episodes``);
    one row per run. Runs not trained yet are left out."""
    import pandas as pd

    cols = ["task", "method", "seed", "success_rate", "last_subgoal_rate", "episodes", "own_success_rate",
            "own_episodes"]
    return pd.DataFrame(_reevaluations(cfg, progress), columns=cols + ["model"])[cols]


def _reevaluations(cfg, progress: bool) -> list[dict]:
    """``reevaluate_run`` of every finished, current run of the profile's grid, in grid order."""
    from tqdm.auto import tqdm

    from relam.report import find_runs

    c = cfg.iql
    runs = find_runs(cfg.out, cfg)
    finished = set(zip(runs.task[runs.finished], runs.method[runs.finished], runs.seed[runs.finished]))
    jobs = [(t, m, s) for s in c.seeds for t in c.tasks for m in c.methods if (t, m, s) in finished]
    return [reevaluate_run(cfg, t, m, s) for t, m, s in tqdm(jobs, desc=f"re-evaluate on {c.reeval_episodes} states",
                                                             disable=not progress, unit="run")]


def per_state_outcomes(cfg, progress: bool = True) -> "pd.DataFrame":
    """One row per re-evaluation episode of the profile's finished runs (``reevaluate_grid``): task, method, seed,
    task_seed, success, reached_last, stages, length. Every run plays the same states, so
    ``.pivot_table(index="task_seed", columns="method", values="success")`` pairs them per state: failures shared
    by every method mark states hard for the learner, not for one plan (README, stage 06)."""
    import pandas as pd

    rows = [{"task": r["task"], "method": r["method"], "seed": r["seed"], **ep}
            for r in _reevaluations(cfg, progress) for ep in r["per_episode"]]
    return pd.DataFrame(rows, columns=["task", "method", "seed", "task_seed", "success", "reached_last", "stages",
                                       "length"])


def run_grid(cfg, progress: bool = True) -> list[dict]:
    """Every task x method x seed of the profile's ``iql`` section (``relam.rl.runs.grid``)."""
    return grid(cfg, "iql", cfg.iql, progress)


def main(argv=None) -> int:
    return run_one_main("iql", train_run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
