"""Where an episode's keypoint subgoals come from (first frame -> plan (M+1, K, 2), normalised).

- ``ModelPlanner`` (method ``relam``): the trained anticipation model on the episode's first frame and the task's
  indication frame; one encoder call and one autoregressive generation per episode.
- ``ExpertPlanner`` (method ``relam-gt``, the paper's Fig. 6(c) ablation): the ground-truth keypoint subgoals of
  the scripted expert from the SAME initial state, extracted exactly like the demo subgoals (keypoint selection
  on the expert rollout, keyframes on its tracks). Costs an expert rollout per new initial state. Where the
  expert fails (door-open: 1 of Table 4's 10 states, 2 of the 20 validation states) there is no ground truth: the
  plan is the failed rollout's, with a warning, and ``failed_seeds`` lists those states.
- ``AnchoredPlanner`` (default around ``ModelPlanner``; deviation from the paper, see its docstring): corrects each
  generated x^0 keypoint with the first-frame mask of the part it stands for ('centroid': moves it with the part's
  mask centroid, then anticipates the later subgoals again from the corrected x^0; 'nearest': snaps it onto the
  mask and shifts its subgoal path with it).
- ``CachedPlanner``: plans are deterministic per task seed; RL draws its initial states from a finite seed pool,
  so each seed is planned once (generating/rolling out per episode halved PPO throughput in SPEC §5's probe).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from relam.envs import make_task
from relam.perception.keyframes import KeyframeConfig
from relam.perception.keypoints import KeypointConfig


def required_task_seed(info: dict | None, who: str) -> int:
    """The episode's task seed, for simulator oracles that re-create its initial state."""
    if not info or info.get("task_seed") is None:
        raise ValueError(f"{who} needs the task seed (info['task_seed'], set by relam.rl.env.TaskEnv)")
    return int(info["task_seed"])


class ModelPlanner:
    """Plans with a trained anticipation model. ``goal_fn(frame, info) -> (GOAL_DIM,)`` gives the task's goal to a
    model trained with ``anticipation.model.goal_input`` (e.g. ``SimGoal``); such a model refuses to plan without
    it. ``goal_factory() -> goal_fn`` instead: made only if the checkpoint's model reads the goal (so a plain model
    opens no simulator for it). ``quantize=True`` plans with the blocks in int8 (``int8_for_cpu``; CPU only): at the
    paper's model size it cuts the planning latency ~3x, the plans moving by a fraction of a pixel."""

    def __init__(self, checkpoint: Path | str, task: str, max_len: int | None = None, goal_fn=None,
                 goal_factory=None, quantize: bool = False):
        from relam.models.train_anticipation import load_model
        self.model, ckpt = load_model(checkpoint)
        if quantize:
            from relam.models.anticipation import int8_for_cpu
            self.model = int8_for_cpu(self.model)
        if self.model.cfg.goal_input and goal_fn is None and goal_factory is not None:
            goal_fn = goal_factory()
        if self.model.cfg.goal_input and goal_fn is None:
            raise ValueError(f"anticipation model {checkpoint} reads the task's goal (anticipation.model.goal_input): "
                             f"give ModelPlanner(goal_fn=...), e.g. relam.rl.planners.SimGoal({task!r})")
        self.goal_fn = goal_fn if self.model.cfg.goal_input else None
        tasks = list(ckpt["tasks"])
        if task not in tasks:
            raise ValueError(f"anticipation model {checkpoint} was trained on {tasks}, not on {task!r}")
        self.task_frame = np.asarray(ckpt["task_frames"][tasks.index(task)])
        self.num_keypoints = self.model.cfg.num_keypoints
        self.generated = True   # plans carry the model's error: the reward may use a looser stage threshold
        self.max_len = max_len
        from relam.models.train_anticipation import held_out_plan_error
        self.plan_error = held_out_plan_error(Path(checkpoint).parent, task, self.task_frame.shape[0])

    @torch.no_grad()
    def __call__(self, frame: np.ndarray, info: dict | None = None, x0: np.ndarray | None = None) -> np.ndarray:
        """The plan for ``frame``; with ``x0`` (K, 2) given, that x^0 and the subgoals the model anticipates
        from it."""
        if frame.shape != self.task_frame.shape:
            raise ValueError(f"first frame is {frame.shape} but the model's task frame is {self.task_frame.shape}")
        first = torch.from_numpy(np.ascontiguousarray(frame))[None]
        feats = self.model.encode_images(first, torch.from_numpy(self.task_frame)[None])
        given = None if x0 is None else torch.as_tensor(np.asarray(x0, np.float32))[None]
        goal = None if self.goal_fn is None else np.asarray(self.goal_fn(frame, info), np.float32)[None]
        return self.model.generate(feats, self.max_len, x0=given, goal=goal)[0]

    def close(self):
        if hasattr(self.goal_fn, "close"):
            self.goal_fn.close()


class ExpertPlanner:
    def __init__(self, task: str, image_size: int = 128, keypoints: KeypointConfig = KeypointConfig(),
                 keyframes: KeyframeConfig = KeyframeConfig(), extra_after_success: int = 10,
                 robot_reference: np.ndarray | None = None):
        """``robot_reference``: the demos' robot reference points (``KeypointConfig.robot_reference``), so that the
        expert's plans choose the same arm points as the demos did."""
        self.task = make_task(task, image_size=image_size)
        self.kp, self.kf, self.extra = keypoints, keyframes, extra_after_success
        self.robot_reference = robot_reference
        self.num_keypoints = keypoints.num_keypoints
        self.generated = False
        self.failed_seeds: set[int] = set()
        """Task seeds whose expert rollout never reached success: their plans are no ground truth of the task."""

    def __call__(self, frame=None, info: dict | None = None) -> np.ndarray:
        from relam.data.rollout import rollout
        from relam.perception.subgoals import extract_demo
        from relam.perception.trackers import SimTracker

        seed = required_task_seed(info, "ExpertPlanner")
        ep = rollout(self.task, seed, extra_after_success=self.extra, record_frames=False)
        if not ep.succeeded:
            self._expert_failed(seed, len(ep.actions))
        gt = ep.groundtruth
        size = self.task.image_size
        video = np.broadcast_to(np.zeros((1, size, size, 3), np.uint8), (len(gt["body_poses"]), size, size, 3))
        masks = dict(zip(self.task.spec.prompts, gt["masks0"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fallbacks warn per demo; RL would print thousands
            demo = extract_demo(video, masks, SimTracker.from_groundtruth(gt), self.task.spec.suite, self.kp,
                                self.kf, self.task.spec.name, self.robot_reference)
        return demo.subgoals

    def _expert_failed(self, seed: int, steps: int) -> None:
        # Kept, not dropped: every method must play the same states, so the state stays and its plan is the
        # failed rollout's keyframes (on door-open the door opens ~11 px of its ~65, and no relam-gt seed passes
        # that state). Warned once per planner: 3 % of door-open's training states fail, a run meets dozens.
        if not self.failed_seeds:
            warnings.warn(f"the scripted expert does not succeed on {self.task.spec.name} from task seed {seed} "
                          f"(stopped after {steps} steps): 'relam-gt' has no ground-truth plan there and plans it with "
                          "the failed rollout's keyframes, which stop short of success. Later such states are not "
                          "warned again; ExpertPlanner.failed_seeds lists them all (results.json of a PPO run: "
                          "'expert_failed_seeds')", RuntimeWarning, stacklevel=3)
        self.failed_seeds.add(int(seed))

    def close(self):
        self.task.close()


def keypoint_prompt_index(prompts, kp: KeypointConfig) -> np.ndarray:
    """Which prompt each of the K keypoints belongs to: keypoint selection orders them robot first, then each
    object prompt, with ``quotas`` points per prompt (``relam.perception.keypoints``)."""
    from relam.perception.keypoints import quotas
    return np.repeat(np.arange(len(prompts)), quotas(prompts, kp.num_keypoints, kp.object_share))


def mask_centroid(mask: np.ndarray) -> np.ndarray | None:
    """Centre (x, y) of a bool (H, W) mask in normalised coordinates (pixel centres), None when it is empty."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    return np.array([cols.mean() + 0.5, rows.mean() + 0.5]) / mask.shape[0]


def reference_centroids(masks_per_demo) -> np.ndarray:
    """(P, 2) mean mask centroid of each prompt over the demos an anticipation model learnt from
    (``masks_per_demo``: per demo, one mask per prompt). A prompt masked in no demo gets NaN (never moved)."""
    cents = [[mask_centroid(m) for m in masks] for masks in masks_per_demo]
    if not cents:
        raise ValueError("reference_centroids needs the masks of at least one demo")
    out = np.full((len(cents[0]), 2), np.nan)
    for j in range(len(out)):
        seen = [c[j] for c in cents if c[j] is not None]
        if seen:
            out[j] = np.mean(seen, 0)
    return out


def believed_centroids(reference: np.ndarray, x0: np.ndarray, mean_x0: np.ndarray, prompt_index) -> np.ndarray:
    """(P, 2) where the model's own x^0 puts each part: its training-demo mean centroid ``reference`` moved by the
    mean displacement of the part's x^0 keypoints from their training-demo mean ``mean_x0`` ((K, 2)). Anchoring
    relative to these instead of ``reference`` (``x0_anchor: residual``) moves a part only by what the model did not
    already read from the image, so a model that reads positions is not moved twice."""
    out = np.array(reference, np.float64)
    x0, mean_x0, prompt_index = np.asarray(x0, np.float64), np.asarray(mean_x0, np.float64), np.asarray(prompt_index)
    if x0.shape != mean_x0.shape or len(prompt_index) != len(x0):
        raise ValueError(f"x0 {x0.shape}, mean_x0 {mean_x0.shape} and prompt_index ({len(prompt_index)}) must agree "
                         "on K; mean_x0 comes from the model's own subgoal dataset")
    for j in range(len(out)):
        ks = prompt_index == j
        if ks.any():
            out[j] += (x0[ks] - mean_x0[ks]).mean(0)
    return out


def anchor_plan(plan: np.ndarray, masks: list[np.ndarray], prompt_index, window: int = 5,
                reference: np.ndarray | None = None, movable: list[np.ndarray] | None = None):
    """Correct the x^0 keypoints of ``plan`` with the first-frame part masks and shift each keypoint's whole
    subgoal path by its correction (the generated motion is kept, only its start moves).

    With ``reference`` ((P, 2), each prompt's mean mask centroid over the training demos) every keypoint first
    moves by its part's displacement in this episode, centroid - reference: where a model cannot tell a part's
    position from the image, its x^0 is where that part's keypoint lies on average, and the part's mask says how
    far this episode's part is from its average place. Then every x^0 keypoint still off its part moves onto the
    nearest interior pixel of that part's mask.

    ``plan``: (M+1, K, 2) normalised; ``masks[j]``: bool (H, W) mask of prompt j on the first frame;
    ``prompt_index``: (K,) prompt of each keypoint. Interior = pixels whose ``window`` square lies in the mask
    (as in keypoint selection), or the raw mask when nothing survives; an empty mask leaves the point as is.
    ``movable[j]`` (optional): the pixels of prompt j that can move; an x^0 keypoint must then also lie on them
    (a keypoint on a static case is tracked on the case and never moves), else it moves to the nearest interior
    pixel that does. Centroids still come from ``masks``.
    Returns (anchored plan, (K,) shift in pixels)."""
    from relam.perception.keypoints import window_filter

    plan = np.array(plan, np.float64)
    size = masks[0].shape[0]
    start = plan[0].copy()
    if reference is not None:
        for k, j in enumerate(prompt_index):
            c = mask_centroid(masks[j])
            if c is not None and np.isfinite(reference[j]).all():
                plan[:, k] += c - reference[j]
    for k, j in enumerate(prompt_index):
        interior = window_filter(masks[j], window)
        if not interior.any():
            interior = np.asarray(masks[j], bool)
        if movable is not None and (interior & movable[j]).any():
            interior = interior & movable[j]
        elif movable is not None and np.any(movable[j]):
            interior = np.asarray(movable[j], bool)
        if not interior.any() or not np.isfinite(plan[0, k]).all():
            continue
        p = plan[0, k] * size
        r, c = int(np.floor(p[1])), int(np.floor(p[0]))
        if 0 <= r < size and 0 <= c < size and interior[r, c]:
            continue
        rows, cols = np.nonzero(interior)
        centres = np.stack([cols + 0.5, rows + 0.5], 1)
        best = centres[np.argmin(((centres - p) ** 2).sum(1))]
        plan[:, k] += (best - p) / size
    shift = np.linalg.norm(plan[0] - start, axis=-1) * size
    return plan, np.where(np.isfinite(shift), shift, 0.0)


class SeededSimOracle:
    """A simulator oracle with its own task instance, reset to the episode's ``info['task_seed']`` when the seed
    changes; ``at_seed(info, key, compute)`` memoises ``compute()`` of the last seed's initial state under ``key``.
    ``share=`` another oracle of the same task: use its task instance and memo instead of a second simulator (a
    ManiSkill scene each); the oracle that made the instance closes it."""
    name = "a simulator oracle"

    def __init__(self, task: str, image_size: int = 128, share: "SeededSimOracle | None" = None):
        if share is not None and share.task.spec.name != task:
            raise ValueError(f"{self.name} for {task!r} cannot share the simulator of {share.task.spec.name!r}")
        self._owner = share is None
        self.task = make_task(task, image_size=image_size) if share is None else share.task
        # {'seed': task seed of the state the instance was reset to, 'values': {key: computed value}}, shared
        self._memo = {"seed": None, "values": {}} if share is None else share._memo

    def at_seed(self, info, key: str, compute):
        seed = required_task_seed(info, self.name)
        if self._memo["seed"] != seed:
            self.task.reset(seed)
            self._memo.update(seed=seed, values={})
        values = self._memo["values"]
        if key not in values:
            values[key] = compute()
        return values[key]

    def close(self):
        if self._owner:
            self.task.close()
            self._owner = False   # closing twice (a planner closing every part) is harmless


class SimFirstFrameMasks(SeededSimOracle):
    """Ground-truth part masks of an episode's first frame, from its task seed (the simulator oracle that plays
    the segmenter's role, as everywhere in simulation): resets its own task instance to ``info['task_seed']``.
    ``movable(frame, info)`` gives, per prompt, the pixels of the bodies that can move (``Task.movable_slots``:
    the drawer, not its case), for ``AnchoredPlanner(movable_fn=)``."""

    name = "SimFirstFrameMasks"

    def __init__(self, task: str, image_size: int = 128, share: SeededSimOracle | None = None):
        super().__init__(task, image_size, share)
        self.prompts = list(self.task.spec.prompts)

    def _segmentation(self, info):
        return self.at_seed(info, "segmentation", self.task.segmentation)

    def __call__(self, frame, info: dict | None) -> list[np.ndarray]:
        masks = self.task.masks(self.prompts, seg=self._segmentation(info))
        return [masks[p] for p in self.prompts]

    def movable(self, frame, info: dict | None) -> list[np.ndarray]:
        seg = self._segmentation(info)
        return [np.isin(seg, self.task.movable_slots(p)) for p in self.prompts]


def goal_features(camera, goal_xyz) -> np.ndarray:
    """What a ``goal_input`` anticipation model reads of a goal at world position ``goal_xyz`` (3,): its pixel
    (u, v) normalised by the image size, as keypoints are, and its camera depth in metres, (GOAL_DIM,) float32.
    In the image's frame so that a shifted first frame (``shift_augment``) shifts it too."""
    uv, z = camera.project(np.asarray(goal_xyz, np.float64)[None])
    return np.array([uv[0, 0] / camera.width, uv[0, 1] / camera.height, z[0]], np.float32)


class SimGoal(SeededSimOracle):
    """The task's goal of an episode from the simulator (``Task.goal_position``, the goal marker), as
    ``goal_features``: resets its own task instance to ``info['task_seed']``. The oracle that stands for what
    ManiSkill's observation gives a policy (``goal_pos``; Meta-World's goal-observable observation ends with its
    target the same way) on the anticipation model's side."""
    name = "SimGoal"

    def __init__(self, task: str, image_size: int = 128, share: SeededSimOracle | None = None):
        super().__init__(task, image_size, share)
        if not hasattr(self.task, "goal_position"):
            self.close()
            raise ValueError(f"task {task!r} has no goal position in the simulator, so its anticipation model cannot "
                             "read one: set anticipation.model.goal_input false for it")

    def __call__(self, frame=None, info: dict | None = None) -> np.ndarray:
        return self.at_seed(info, "goal", lambda: goal_features(self.task.camera(), self.task.goal_position()))


class AnchoredPlanner:
    """A planner whose x^0 keypoints are corrected with their parts' first-frame masks (``anchor_plan``).

    Why (deviation from the paper, where x^0 is the model's output as is): the tracker follows whatever body lies
    under each x^0 pixel, and the later subgoals only make sense relative to where the parts really are. Our
    small CPU anticipation models do not read positions from the image (their x^0 error equals that of always
    answering the training mean, README), so (a) the cube's keypoint landed on the table in 88 % (PushCube) /
    87 % (PickCube) of the offline trajectories: a keypoint that never moves, subgoals that can never be reached;
    (b) on Meta-World the plan stayed at the drawer's average place, so PPO learnt to put the arm's keypoints on
    their subgoals beside a drawer that was elsewhere (drawer-open: 9 of 10 evaluation episodes stalled at
    stage 4 of 7 with the arm's keypoints within 2.4 px and the handle's 14-16 px off).

    ``reference=None`` (mode 'nearest'): x^0 keypoints off their part snap onto it, the paths shift along.
    With ``reference`` (mode 'centroid', each prompt's mean mask centroid over the training demos,
    ``reference_centroids``) every keypoint first moves with its part's centroid; ``replan=True`` then asks the
    model for the later subgoals from the corrected x^0 (``ModelPlanner(..., x0=)``; the model was trained on
    true x^0 by teacher forcing, so it has learnt how the plan depends on it). Measured on the ``cpu`` models
    (held-out demos, px; own / 'nearest' / 'centroid' with replan): object x^0 drawer-open 5.3 / 5.3 / 0.9,
    PushCube 2.7 / 2.5 / 1.5 (training demos 12.1 / 3.9 / 1.4); later subgoals drawer-open 4.0 / 4.0 / 2.4,
    PushCube training demos 17.7 / 16.2 / 10.2; PickCube barely (its goal is not in any mask). Success with
    PPO at ``cpu`` (3 seeds, 'nearest' -> 'centroid'): button-press-wall 83.3 -> 100 %, drawer-open 23.3 ->
    33.3 %, door-open 0 -> 0 %. What still stops drawer-open (9 of 10 evaluation episodes of one seed, either
    mode): the policy puts the arm's keypoints on the subgoal of the pulled drawer (within 1-3 px) without
    having hooked the handle, and the handle's keypoint stays 16 px short: the 2-D subgoal does not say how
    deep the hand must be.

    ``movable_fn`` (optional, same signature): the pixels of each part that can move; x^0 keypoints must end on
    them (``anchor_plan(movable=)``). Why: with the whole "green drawer" mask (the static case is 87 % of its
    pixels) the anchored handle keypoint sat on the case in 2 of 10 held-out drawer-open episodes, was tracked on
    the case and never moved, so its subgoals could not be reached (a `cpu` relam policy failed both, the drawer
    moved 7-8 cm, the keypoint 0 px). With your own segmenter, prompt the part that moves ("drawer handle").

    ``reselect`` (a ``KeypointConfig``, optional): the x^0 keypoints that the keypoint selection chooses from the
    first frame alone (``relam.perception.keypoints.reselect_first_frame``: the robot's under 'near-object') are
    chosen again on this episode's masks and replace the anchored ones, before the replan. Why: the tracker then
    follows exactly the points the demos' subgoals were made for; the model's own robot x^0 on PickCube is ~4 px
    off (its image reading), the re-chosen one equals the demos' (probe on the 50 `cpu` demos: < 0.01 px).

    ``mean_x0`` ((K, 2), optional, with ``reference``; ``x0_anchor: residual``): the training demos' mean x^0. Each
    part then moves by its centroid's displacement minus the one the model's x^0 already holds
    (``believed_centroids``). Why: 'centroid' assumes a model that answers the mean x^0; a model that reads the
    part's place from the image is moved a second time. Measured on PickCube's 50 unseen demos (x^0 / plan px,
    the profile's model): 'centroid' 4.01 / 3.78, 'residual' 3.22 / 3.43 (the cube's x^0 2.6 -> 1.8); with the
    model that reads the cube (``anticipation.x0_weight`` 30): 3.96 / 4.19 -> 3.29 / 3.73.

    ``masks_fn(frame, info) -> [mask per prompt]``; for your own robot, e.g.
    ``lambda frame, info: [m for m in segmenter(frame, prompts).values()]``."""

    def __init__(self, planner, masks_fn, prompt_index, window: int = 5, reference: np.ndarray | None = None,
                 replan: bool = False, movable_fn=None, reselect=None, mean_x0: np.ndarray | None = None):
        self.planner, self.masks_fn, self.movable_fn = planner, masks_fn, movable_fn
        self.prompt_index, self.window = np.asarray(prompt_index), window
        self.reference, self.replan, self.reselect = reference, replan, reselect
        if mean_x0 is not None and reference is None:
            raise ValueError("AnchoredPlanner(mean_x0=) corrects the centroid reference: give reference= too")
        self.mean_x0 = None if mean_x0 is None else np.asarray(mean_x0, np.float64)
        self.num_keypoints = planner.num_keypoints
        self.generated = getattr(planner, "generated", True)
        self.plan_error = getattr(planner, "plan_error", None)
        if len(self.prompt_index) != self.num_keypoints:
            raise ValueError(f"prompt_index has {len(self.prompt_index)} entries for {self.num_keypoints} keypoints")

    def __call__(self, frame, info=None):
        plan = self.planner(frame, info)
        masks = self.masks_fn(frame, info)
        movable = self.movable_fn(frame, info) if self.movable_fn is not None else None
        reference = self.reference if self.mean_x0 is None else \
            believed_centroids(self.reference, plan[0], self.mean_x0, self.prompt_index)
        plan = anchor_plan(plan, masks, self.prompt_index, self.window, reference, movable)[0]
        if self.reselect is not None:
            from relam.perception.keypoints import reselect_first_frame
            chosen = reselect_first_frame(masks, self.reselect) / np.asarray(masks[0]).shape[0]
            found = np.isfinite(chosen).all(1)
            plan[:, found] += chosen[found] - plan[0, found]   # without a replan the paths move along
        return self.planner(frame, info, x0=plan[0]) if self.replan else plan

    def close(self):
        for part in (self.planner, self.masks_fn):
            if hasattr(part, "close"):
                part.close()


class CachedPlanner:
    """Memoises a planner by ``info['task_seed']`` (falls through when there is none)."""

    def __init__(self, planner):
        self.planner, self.cache = planner, {}
        self.num_keypoints = planner.num_keypoints
        self.generated = getattr(planner, "generated", False)
        self.plan_error = getattr(planner, "plan_error", None)
        self.failed_seeds = getattr(planner, "failed_seeds", None)   # the expert planner's own set, shared

    def lookup(self, info):
        key = None if not info else info.get("task_seed")
        return self.cache.get(key) if key is not None else None

    def __call__(self, frame, info=None):
        key = None if not info else info.get("task_seed")
        if key is None:
            return self.planner(frame, info)
        if key not in self.cache:
            self.cache[key] = self.planner(frame, info)
        return self.cache[key]

    def close(self):
        """Close the planner's simulator oracles (their ManiSkill / MuJoCo scenes); cached plans stay usable."""
        if hasattr(self.planner, "close"):
            self.planner.close()
