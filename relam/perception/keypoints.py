"""Keypoint selection (paper Eq. 1, App. A.1; SPEC §2).

masks on frame 0 -> window filter (w x w square inside the mask = binary erosion) -> track candidates ->
motion filter (max_t |T(p,t) - T(p,0)| > eps) -> farthest point sampling per prompt, with quotas (the robot
gets K - floor(K/4), the object floor(K/4)) and a deterministic start (the candidate with the largest motion
range), so the ORDER of keypoints means the same thing across demos: the anticipation model relies on it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from relam.perception.base import PerceptionError


@dataclass
class KeypointConfig:
    num_keypoints: int = 4
    """K (paper: 4; ablation 4, 8, 12: ``relam.ablations.num_keypoints_overrides``, notebook 08's ``k8``). Measured at
    ``cpu`` (relam, 3 seeds, 2026-12-03), K 4 -> 8: door-open 3.3 -> 53.3 % (more arm points keep a hand that is on
    its 2-D subgoal from sitting 10 cm too low), drawer-open 96.7 -> 63.3, button-press-wall 100 -> 100; so 4 stays
    the default and the ``cpu`` profile gives door-open alone K = 8 (``PerceptionConfig.task_overrides``)."""
    window: int = 5
    """w of the window filter at 128 px (ours): a pixel is kept only if its w x w square lies in the mask."""
    motion_eps: float = 0.03
    """Motion filter threshold as a fraction of the image size (ours: 0.03 -> 3.84 px at 128 px)."""
    object_share: float = 0.25
    """Each non-robot prompt gets floor(K * share) keypoints, the robot (first prompt) the rest."""
    candidate_stride: int = 2
    """Track every stride-th pixel (in both axes) of the filtered masks: same spread, 1/stride^2 the cost."""
    relax_window: bool = True
    """If a prompt keeps fewer candidates than its quota (a small or partly occluded object, e.g. PickCube's
    cube behind its goal sphere), retry with stride 1, then windows 3 and 1, with a warning. False: raise."""
    selection: str = "fps"
    """How keypoints are chosen among a prompt's moving candidates. 'fps' (paper, SPEC §2): farthest point
    sampling from the most-moving candidate. 'motion' (ours; every prompt): the most-moving candidates, at least
    ``min_separation`` apart. 'near-object' (ours; the robot prompt only, objects keep 'fps'): the robot's
    candidates closest to the other prompts' masks on frame 0 (the gripper, next to what it will manipulate),
    at least ``min_separation`` apart. Why: the anticipation model must predict x^0 from the first frame, so the same
    physical points must be chosen in every demo. Measured on the 50 `cpu` demos per task (mean error of the
    best linear prediction of each robot keypoint's x^0 from the object keypoint's, leave-one-out, px):
    PushCube fps 12 / 16 / 6, motion 12 / 12 / 13, near-object 5 / 6 / 7; PickCube fps 9 / 20 / 28,
    motion 9 / 10 / 10, near-object 4 / 5 / 6; door-open fps 5 / 9 / 4, near-object 0 / 2 / 2. The `cpu` profile
    takes 'near-object' for PickCube and PushCube (``perception.task_overrides``; README, stage 06)."""
    min_separation: float = 0.04
    """'motion' and 'near-object' selection: smallest distance between two keypoints of one prompt, as a
    fraction of the image size (0.04 -> 5.1 px at 128 px)."""
    static_fallback: bool = True
    """If fewer than its quota of a prompt's pixels pass the motion filter (e.g. a PickCube goal right above
    the cube: it moves ~3 px), keep that prompt's keypoints from all its candidates (FPS from the most-moving
    one) with a warning, instead of failing; the keypoint order stays consistent. False: raise."""

    robot_reference: bool = False
    """Ours (off: the paper's per-demo selection). Choose the robot's keypoints in every demo of a task as the moving
    candidates nearest to ONE reference selection: the medoid of the demos' own selections (``reference_selection``,
    stored with the subgoal dataset and used by ``relam-gt``'s expert plans too). Why: where the robot starts in the
    same pose in every demo (Meta-World), the FPS start, the most-moving candidate, is near-tied between arm pixels,
    and a demo that breaks the tie differently gets a different set of arm points in a different order. On the 100
    `cpu` door-open demos (K = 8) 7 did: their six arm keypoints lay 38-74 px from the other 93 demos' (which agree
    to 0 px), so keypoint i was not the same arm point in every demo, and the anticipation model, trained with MSE,
    learnt an average of the two: held-out x^0 / plan 6.59 / 8.48 px, 1.88 / 4.68 with the reference (50 unseen demos
    6.46 / 8.98 -> 1.77 / 5.34); door-open ``relam`` PPO (300k, 10 seeds) 87.0 -> 83.0 %, within the spread (README,
    stage 05). The robot's points only: the objects' start where the task places them. On for door-open in ``cpu`` and
    ``smoke``."""

    def __post_init__(self):
        if self.selection not in ("fps", "motion", "near-object"):
            raise ValueError(f"unknown keypoint selection {self.selection!r}; choose 'fps', 'motion' or "
                             "'near-object'")


@dataclass
class Keypoints:
    points: np.ndarray        # (K, 2) pixel coordinates on frame 0
    tracks: np.ndarray        # (T, K, 2) pixel coordinates (may leave the image)
    visible: np.ndarray       # (T, K)
    prompt_index: np.ndarray  # (K,) index into prompts
    prompts: list
    candidates: dict          # prompt -> (N, 2) frame-0 pixels that survived both filters (for plots)


def window_filter(mask: np.ndarray, window: int) -> np.ndarray:
    """Pixels whose whole ``window`` x ``window`` square lies inside ``mask`` (outside the image = outside)."""
    if window <= 1:
        return np.asarray(mask, bool).copy()
    return ndimage.binary_erosion(mask, structure=np.ones((window, window), bool), border_value=0)


def motion_range(tracks: np.ndarray) -> np.ndarray:
    """(T, N, 2) -> (N,) max_t |T(p, t) - T(p, 0)|."""
    return np.linalg.norm(tracks - tracks[:1], axis=-1).max(axis=0)


def farthest_point_sampling(points: np.ndarray, k: int, start: int = 0) -> np.ndarray:
    """Indices of ``k`` points chosen greedily, each the farthest from those already chosen."""
    points = np.asarray(points, np.float64)
    if k > len(points):
        raise ValueError(f"cannot sample {k} points from {len(points)}")
    return _fps_extend(points, [int(start)], k)


def _fps_extend(points: np.ndarray, chosen: list[int], k: int) -> np.ndarray:
    """Add farthest points to ``chosen`` (non-empty) until it holds ``k``."""
    dist = np.min([np.linalg.norm(points - points[j], axis=1) for j in chosen], axis=0)
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(points - points[nxt], axis=1))
    return np.asarray(chosen)


def most_moving_spread(points: np.ndarray, motion: np.ndarray, k: int, min_dist: float) -> np.ndarray:
    """Indices of ``k`` points taken in order of decreasing ``motion``, skipping any closer than ``min_dist`` to
    one already taken (if too few are that far apart, the rest are filled by farthest point sampling)."""
    points = np.asarray(points, np.float64)
    if k > len(points):
        raise ValueError(f"cannot sample {k} points from {len(points)}")
    chosen: list[int] = []
    for i in np.argsort(-np.asarray(motion), kind="stable"):
        if all(np.linalg.norm(points[i] - points[j]) >= min_dist for j in chosen):
            chosen.append(int(i))
            if len(chosen) == k:
                return np.asarray(chosen)
    return _fps_extend(points, chosen, k)


def nearest_to_objects(candidates: np.ndarray, object_masks, k: int, min_dist: float) -> np.ndarray:
    """'near-object' selection: indices of the ``k`` robot ``candidates`` (N, 2) px closest to any of the objects'
    frame-0 masks, at least ``min_dist`` apart (``most_moving_spread`` ordered by closeness)."""
    others = np.concatenate([np.argwhere(m)[:, ::-1] + 0.5 for m in object_masks])
    near = -np.linalg.norm(np.asarray(candidates)[:, None] - others[None], axis=-1).min(1)
    return most_moving_spread(candidates, near, k, min_dist)


def nearest_to_reference(candidates: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Indices of the ``candidates`` (N, 2) nearest to each ``reference`` point (Q, 2) in turn, each candidate taken
    once: the reference's points, in its order, wherever this demo has them (``robot_reference``)."""
    candidates, reference = np.asarray(candidates, np.float64), np.asarray(reference, np.float64)
    if len(reference) > len(candidates):
        raise ValueError(f"cannot match {len(reference)} reference points with {len(candidates)} candidates")
    dist = np.linalg.norm(candidates[:, None] - reference[None], axis=-1)
    chosen: list[int] = []
    for q in range(len(reference)):
        d = dist[:, q].copy()
        d[chosen] = np.inf
        chosen.append(int(np.argmin(d)))
    return np.asarray(chosen)


def reference_selection(points: np.ndarray) -> np.ndarray:
    """The medoid (Q, 2) of per-demo selections ``points`` (N, Q, 2): the demo's points with the least mean
    distance to the other demos' same-index points. With most demos in agreement this is their selection."""
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or not len(points):
        raise ValueError(f"reference_selection needs (demos, points, 2) coordinates, got shape {points.shape}")
    cost = np.linalg.norm(points[:, None] - points[None], axis=-1).mean(-1).sum(1)
    return points[int(np.argmin(cost))]


def reselect_first_frame(masks: list, cfg: KeypointConfig) -> np.ndarray:
    """(K, 2) pixel keypoints that ``select_keypoints`` would choose from the first frame's masks (one per prompt,
    robot first) alone, NaN for those it cannot: the robot's under 'near-object' need no motion (only candidates
    that do not move would differ, and the robot's pixels next to an object move in every demo: on the 50 `cpu`
    PickCube demos the re-chosen points equal the demos' to < 0.01 px); 'fps' and 'motion' start from the most-
    moving candidate, which only the whole video shows. For ``AnchoredPlanner(reselect=)``."""
    want = quotas(masks, cfg.num_keypoints, cfg.object_share)
    out = np.full((cfg.num_keypoints, 2), np.nan)
    if cfg.selection != "near-object" or len(masks) < 2 or not np.any(masks[0]) \
            or not all(np.any(m) for m in masks[1:]):
        return out
    cands = candidate_pixels(masks[0], cfg.window, cfg.candidate_stride)
    if len(cands) < want[0]:
        return out
    size = np.asarray(masks[0]).shape[0]
    out[:want[0]] = cands[nearest_to_objects(cands, masks[1:], want[0], cfg.min_separation * size)]
    return out


def quotas(prompts, k: int, object_share: float) -> list[int]:
    others = [int(np.floor(k * object_share))] * (len(prompts) - 1)
    return [k - sum(others)] + others


def candidate_pixels(mask: np.ndarray, window: int, stride: int) -> np.ndarray:
    keep = window_filter(mask, window)
    grid = np.zeros_like(keep)
    grid[::stride, ::stride] = True
    rows, cols = np.nonzero(keep & grid)
    return np.stack([cols + 0.5, rows + 0.5], axis=1)


def select_keypoints(video: np.ndarray, masks: dict, tracker, cfg: KeypointConfig = KeypointConfig(),
                     task: str = "?", reference: np.ndarray | None = None) -> Keypoints:
    """Choose K keypoints on frame 0 of ``video`` from the prompt masks (dict ordered robot first) and
    return them with their tracks. ``reference`` (the robot's quota x 2 px; ``robot_reference``): the robot's
    keypoints are the moving candidates nearest to it instead of ``cfg.selection``'s. Raises PerceptionError on
    empty masks, too few candidates or NaN tracks."""
    prompts = list(masks)
    size = video.shape[1]
    per_prompt = []
    for p in prompts:
        if not np.any(masks[p]):
            raise PerceptionError(f"task {task!r}: the mask for prompt {p!r} is empty on frame 0; check the "
                                  "prompt text, the camera (is the object in view?) or the segmenter backend")
        per_prompt.append(candidate_pixels(masks[p], cfg.window, cfg.candidate_stride))
    want = quotas(prompts, cfg.num_keypoints, cfg.object_share)
    for j, (p, q) in enumerate(zip(prompts, want)):
        if len(per_prompt[j]) >= q or not cfg.relax_window:
            continue
        for window, stride in ((cfg.window, 1), (min(3, cfg.window), 1), (1, 1)):
            per_prompt[j] = candidate_pixels(masks[p], window, stride)
            if len(per_prompt[j]) >= q:
                warnings.warn(f"task {task!r}: prompt {p!r} is small on frame 0 ({int(masks[p].sum())} px); "
                              f"candidates taken with window {window}, stride {stride} (relax_window)", stacklevel=2)
                break
    for p, cands, q in zip(prompts, per_prompt, want):
        if len(cands) < q:
            raise PerceptionError(
                f"task {task!r}: prompt {p!r} has {len(cands)} candidate pixels after the {cfg.window}x{cfg.window} "
                f"window filter but needs {q}; use a smaller window, candidate_stride or num_keypoints "
                "(relax_window does this automatically)")
    all_q = np.concatenate(per_prompt)
    tracks, visible = tracker(video, all_q)
    tracks = np.asarray(tracks, np.float64)
    bad = ~np.isfinite(tracks).all(axis=(0, 2))
    if bad.any():
        raise PerceptionError(f"task {task!r}: the tracker returned NaN/inf for {int(bad.sum())} of {len(all_q)} "
                              "query points; check the tracker backend (sim needs matching ground truth)")
    rng = motion_range(tracks)
    eps = cfg.motion_eps * size
    chosen, prompt_index, survivors = [], [], {}
    offset = 0
    for i, (p, cands, q) in enumerate(zip(prompts, per_prompt, want)):
        idx = np.arange(offset, offset + len(cands))
        offset += len(cands)
        moving = idx[rng[idx] > eps]
        survivors[p] = all_q[moving]
        if len(moving) < q:
            msg = (f"task {task!r}: only {len(moving)} pixels of prompt {p!r} move more than {eps:.1f} px "
                   f"(motion_eps={cfg.motion_eps}) but {q} keypoints are needed")
            if not cfg.static_fallback:
                raise PerceptionError(msg + "; lower motion_eps or check the tracks")
            warnings.warn(msg + "; using its most-moving candidates instead (static_fallback)", stacklevel=2)
            moving = idx
        if q == 0:
            continue
        if reference is not None and i == 0:
            if len(reference) != q:
                raise PerceptionError(f"task {task!r}: the robot reference holds {len(reference)} points but the "
                                      f"robot's quota is {q}; rebuild the subgoal dataset (notebooks/03)")
            pick = moving[nearest_to_reference(all_q[moving], reference)]
        elif cfg.selection == "motion":
            pick = moving[most_moving_spread(all_q[moving], rng[moving], q, cfg.min_separation * size)]
        elif cfg.selection == "near-object" and i == 0 and len(prompts) > 1:
            pick = moving[nearest_to_objects(all_q[moving], [masks[o] for o in prompts[1:]], q,
                                             cfg.min_separation * size)]
        else:
            start = int(np.argmax(rng[moving]))  # deterministic start: the most-moving candidate
            pick = moving[farthest_point_sampling(all_q[moving], q, start)]
        chosen.extend(pick)
        prompt_index.extend([i] * q)
    chosen = np.asarray(chosen)
    return Keypoints(points=all_q[chosen], tracks=tracks[:, chosen], visible=np.asarray(visible)[:, chosen],
                     prompt_index=np.asarray(prompt_index), prompts=prompts, candidates=survivors)
