"""Keypoint selection (SPEC §2) and keyframe selection (SPEC §3) on synthetic inputs."""
import numpy as np
import pytest

from relam.perception.base import PerceptionError
from relam.perception.keyframes import select_keyframes
from relam.perception.keypoints import (KeypointConfig, farthest_point_sampling, nearest_to_reference, quotas,
                                        reference_selection, select_keypoints, window_filter)


def _min_pairwise(p):
    d = np.linalg.norm(p[:, None] - p[None], axis=-1)
    return d[np.triu_indices(len(p), 1)].min()


def test_fps_spreads_points_better_than_random():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (500, 2))
    fps = pts[farthest_point_sampling(pts, 8, start=0)]
    rand = [_min_pairwise(pts[rng.choice(500, 8, replace=False)]) for _ in range(200)]
    assert _min_pairwise(fps) > np.percentile(rand, 95)


def test_fps_is_exact_on_a_simple_case():
    pts = np.array([[0, 0], [1, 0], [10, 0], [5, 0], [10, 10]], float)
    assert farthest_point_sampling(pts, 3, start=0).tolist() == [0, 4, 2]


def test_window_filter_drops_borders_and_isolated_pixels():
    mask = np.zeros((20, 20), bool)
    mask[5:12, 5:12] = True        # 7x7 square: only its 3x3 centre survives a 5x5 window
    mask[2, 17] = True             # isolated pixel
    mask[16:20, 0:5] = True        # block touching the image border: outside the image counts as outside
    kept = window_filter(mask, 5)
    assert kept.sum() == 9 and kept[7:10, 7:10].all()
    assert not kept[2, 17] and not kept[15:, :5].any()
    assert not (kept & ~mask).any()


def _synthetic_scene(shift=0.0, noise=0.0, seed=0):
    """Two 'objects' in a 64x64 video: the robot block rotates about a pivot (so motion range grows with
    the distance to it), the object block swings later; a static block belongs to the object prompt
    but never moves."""
    T, H = 30, 64
    rng = np.random.default_rng(seed)
    robot = np.zeros((H, H), bool)
    robot[10:30, 8:20] = True      # an L shape: no symmetric ties for FPS
    robot[10:16, 20:34] = True
    obj = np.zeros((H, H), bool)
    obj[40:52, 40:52] = True
    obj[40:52, 5:15] = True        # static part of the object mask

    def tracker(video, q):
        t = np.arange(T)[:, None]
        moving_robot = (q[:, 1] < 32) & (q[:, 0] < 36)
        moving_obj = (q[:, 1] >= 38) & (q[:, 0] > 35)
        disp = np.zeros((T, len(q), 2))
        ang = np.minimum(t, 15) / 15 * 0.5 + shift           # (T, 1)
        rel = q[moving_robot] - np.array([8.0, 10.0])
        c, s_ = np.cos(ang), np.sin(ang)
        rot = np.stack([c * rel[:, 0] - s_ * rel[:, 1], s_ * rel[:, 0] + c * rel[:, 1]], -1)
        disp[:, moving_robot] = rot - rel
        ang_o = np.maximum(t - 15, 0) / 15 * 0.4                # the object swings about a hinge too
        rel_o = q[moving_obj] - np.array([38.0, 38.0])
        c, s_ = np.cos(ang_o), np.sin(ang_o)
        disp[:, moving_obj] = np.stack([c * rel_o[:, 0] - s_ * rel_o[:, 1], s_ * rel_o[:, 0] + c * rel_o[:, 1]], -1) - rel_o
        disp += rng.normal(0, noise, disp.shape)
        return q[None] + disp, np.ones((T, len(q)), bool)

    video = np.zeros((T, H, H, 3), np.uint8)
    return video, {"robot arm": robot, "cube": obj}, tracker


def test_motion_filter_drops_static_points():
    video, masks, tracker = _synthetic_scene()
    kp = select_keypoints(video, masks, tracker, KeypointConfig(num_keypoints=4, window=3), task="synthetic")
    assert kp.prompt_index.tolist() == [0, 0, 0, 1]
    obj_point = kp.points[3]
    assert obj_point[0] > 35, "the object keypoint must come from the moving part, not the static block"
    assert (kp.candidates["cube"][:, 0] > 35).all()
    assert np.all(np.linalg.norm(kp.tracks[-1] - kp.tracks[0], axis=-1) > 0.03 * 64)


def test_static_object_falls_back_to_its_most_moving_pixel_or_raises():
    video, masks, tracker = _synthetic_scene()
    static_obj = {"robot arm": masks["robot arm"], "cube": np.zeros_like(masks["cube"])}
    static_obj["cube"][40:52, 5:15] = True   # only the block that never moves
    with pytest.warns(UserWarning, match="'cube'.*static_fallback"):
        kp = select_keypoints(video, static_obj, tracker, KeypointConfig(window=3))
    assert kp.prompt_index.tolist() == [0, 0, 0, 1] and 5 <= kp.points[3, 0] <= 15
    with pytest.raises(PerceptionError, match=r"only 0 pixels of prompt 'cube' move"):
        select_keypoints(video, static_obj, tracker, KeypointConfig(window=3, static_fallback=False))


def test_keypoint_order_is_stable_under_small_perturbation():
    video, masks, tracker = _synthetic_scene()
    ref = select_keypoints(video, masks, tracker, KeypointConfig(window=3))
    for seed in range(3):
        _, _, noisy = _synthetic_scene(noise=0.05, seed=seed + 1)
        other = select_keypoints(video, masks, noisy, KeypointConfig(window=3))
        # same roles in the same slots: each keypoint stays within a few pixels of its reference
        assert np.abs(other.points - ref.points).max() <= 4.0
    cands = ref.candidates["robot arm"]
    farthest_from_pivot = cands[np.argmax(np.linalg.norm(cands - [8.0, 10.0], axis=1))]
    np.testing.assert_allclose(ref.points[0], farthest_from_pivot, err_msg="FPS must start at the most-moving pixel")


def test_most_moving_spread_takes_the_fastest_points_at_least_min_dist_apart():
    from relam.perception.keypoints import most_moving_spread

    pts = np.array([[0, 0], [1, 0], [10, 0], [20, 0], [2, 0]], float)
    motion = np.array([5.0, 4.0, 3.0, 1.0, 4.5])
    assert most_moving_spread(pts, motion, 3, min_dist=3.0).tolist() == [0, 2, 3]   # 4 and 1 are too close to 0
    assert most_moving_spread(pts, motion, 3, min_dist=0.5).tolist() == [0, 4, 1]
    # not enough points that far apart: the rest come from farthest point sampling
    assert most_moving_spread(pts, motion, 3, min_dist=15.0).tolist() == [0, 3, 2]


def _pivot_tracker(pivot, T=30):
    """Every pixel moves along +x by an amount that grows with its distance to ``pivot``: the most-moving pixel,
    where FPS starts, is the one farthest from it."""
    def tracker(video, q):
        reach = np.linalg.norm(q - np.asarray(pivot, float), axis=1)
        disp = np.zeros((T, len(q), 2))
        disp[..., 0] = np.linspace(0, 1, T)[:, None] * reach[None]
        return q[None] + disp, np.ones((T, len(q)), bool)
    return tracker


def test_robot_reference_makes_a_demo_that_breaks_the_fps_tie_otherwise_choose_the_same_arm_points():
    """Two demos with the same first frame whose arms move differently: FPS starts at each one's most-moving pixel,
    so they choose different arm points. With the first demo's points as the reference the second chooses them too,
    in the same order; the object's keypoint still follows its own rule."""
    video, masks, _ = _synthetic_scene()
    cfg = KeypointConfig(num_keypoints=4, window=3)
    a = select_keypoints(video, masks, _pivot_tracker((8.0, 10.0)), cfg)
    b = select_keypoints(video, masks, _pivot_tracker((34.0, 30.0)), cfg)
    assert np.abs(a.points[:3] - b.points[:3]).max() > 10          # the tie broken differently
    b_ref = select_keypoints(video, masks, _pivot_tracker((34.0, 30.0)), cfg, reference=a.points[:3])
    np.testing.assert_allclose(b_ref.points[:3], a.points[:3])
    np.testing.assert_allclose(b_ref.points[3], b.points[3])
    np.testing.assert_allclose(b_ref.tracks[0], b_ref.points)     # tracks follow the chosen points
    with pytest.raises(PerceptionError, match="robot reference holds 2 points but the robot's quota is 3"):
        select_keypoints(video, masks, _pivot_tracker((8.0, 10.0)), cfg, reference=a.points[:2])


def test_reference_selection_is_the_demos_majority_and_matching_takes_each_candidate_once():
    common = np.array([[0, 0], [10, 0], [0, 10]], float)
    odd = common[[2, 0, 1]] + 3.0
    demos = np.stack([common, common + 0.5, odd, common, common - 0.5])
    np.testing.assert_allclose(reference_selection(demos), common)
    with pytest.raises(ValueError, match="demos, points, 2"):
        reference_selection(common)
    cands = np.array([[0, 1], [9, 0], [30, 30], [1, 1]], float)
    # both reference points lie nearest candidate 0; the second takes the next nearest free one
    assert nearest_to_reference(cands, np.array([[0, 0], [0, 0.5], [10, 0]])).tolist() == [0, 3, 1]
    with pytest.raises(ValueError, match="cannot match 5 reference points with 4 candidates"):
        nearest_to_reference(cands, np.zeros((5, 2)))


def test_near_object_selection_puts_robot_keypoints_next_to_the_object_in_every_demo():
    """'near-object': the robot's keypoints are its moving candidates closest to the object masks (the gripper
    in a manipulation scene), so the same physical points are chosen whatever the motion; 'fps' starts from the
    most-moving pixel and spreads over the whole arm."""
    video, masks, tracker = _synthetic_scene()
    obj_pixels = np.argwhere(masks["cube"])[:, ::-1] + 0.5
    cfg = KeypointConfig(num_keypoints=4, window=3, selection="near-object", min_separation=0.05)
    kp = select_keypoints(video, masks, tracker, cfg)
    fps = select_keypoints(video, masks, tracker, KeypointConfig(num_keypoints=4, window=3))
    assert kp.prompt_index.tolist() == [0, 0, 0, 1]
    np.testing.assert_allclose(kp.points[3], fps.points[3])             # object keypoints: unchanged rule
    cands = kp.candidates["robot arm"]
    to_obj = lambda p: np.linalg.norm(np.asarray(p)[..., None, :] - obj_pixels, axis=-1).min(-1)  # noqa: E731
    assert to_obj(kp.points[0]) == pytest.approx(to_obj(cands).min())
    assert to_obj(kp.points[:3]).max() < to_obj(fps.points[:3]).max()
    assert _min_pairwise(kp.points[:3]) >= 0.05 * 64
    with pytest.raises(ValueError, match="unknown keypoint selection"):
        KeypointConfig(selection="random")


def test_reselect_on_the_first_frame_gives_the_near_object_robot_keypoints_and_nothing_it_cannot_know():
    """At RL time only the first frame exists: the robot's 'near-object' keypoints are chosen again from its
    masks exactly as from the demo (same points, same order); the object's FPS start needs the motion: NaN."""
    from relam.perception.keypoints import reselect_first_frame

    video, masks, tracker = _synthetic_scene()
    cfg = KeypointConfig(num_keypoints=4, window=3, selection="near-object", min_separation=0.05)
    kp = select_keypoints(video, masks, tracker, cfg)
    again = reselect_first_frame(list(masks.values()), cfg)
    np.testing.assert_allclose(again[:3], kp.points[:3])
    assert np.isnan(again[3]).all()
    assert np.isnan(reselect_first_frame(list(masks.values()), KeypointConfig(num_keypoints=4, window=3))).all()
    no_object = [masks["robot arm"], np.zeros_like(masks["cube"])]
    assert np.isnan(reselect_first_frame(no_object, cfg)).all()     # nothing to be near: no answer, no crash


def test_quotas_follow_the_spec():
    assert quotas(["robot", "obj"], 4, 0.25) == [3, 1]
    assert quotas(["robot", "obj"], 8, 0.25) == [6, 2]
    assert quotas(["robot", "obj"], 12, 0.25) == [9, 3]


def test_bad_inputs_are_clear_errors():
    video, masks, tracker = _synthetic_scene()
    empty = dict(masks, cube=np.zeros_like(masks["cube"]))
    with pytest.raises(PerceptionError, match=r"task 'drawer-open'.*prompt 'cube' is empty"):
        select_keypoints(video, empty, tracker, KeypointConfig(window=3), task="drawer-open")
    tiny = dict(masks, cube=np.zeros_like(masks["cube"]))
    tiny["cube"][40:43, 40:43] = True
    with pytest.raises(PerceptionError, match=r"'cube' has 0 candidate pixels.*needs 1"):
        select_keypoints(video, tiny, tracker, KeypointConfig(window=5, relax_window=False))
    with pytest.warns(UserWarning, match=r"'cube' is small.*window 3"):  # relaxed: the 3x3 block's centre
        kp = select_keypoints(video, tiny, tracker, KeypointConfig(window=5))
    np.testing.assert_allclose(kp.points[3], [41.5, 41.5])
    with pytest.raises(PerceptionError, match=r"'robot arm' has 2 candidate pixels.*needs 3"):
        two = dict(masks, **{"robot arm": np.zeros_like(masks["robot arm"])})
        two["robot arm"][10, 10:12] = True
        select_keypoints(video, two, tracker, KeypointConfig(window=5))

    def nan_tracker(v, q):
        tr, vis = tracker(v, q)
        tr[5, 0] = np.nan
        return tr, vis
    with pytest.raises(PerceptionError, match="NaN"):
        select_keypoints(video, masks, nan_tracker, KeypointConfig(window=3))


def _piecewise_linear(corners, times, k=3, seed=0):
    """K points following the same corner path (with different offsets), constant speed per segment."""
    rng = np.random.default_rng(seed)
    path = []
    for (a, b), (ta, tb) in zip(zip(corners[:-1], corners[1:]), zip(times[:-1], times[1:])):
        for t in range(ta, tb):
            path.append(np.asarray(a) + (np.asarray(b) - np.asarray(a)) * (t - ta) / (tb - ta))
    path.append(np.asarray(corners[-1], float))
    path = np.asarray(path, float)
    offsets = rng.uniform(-5, 5, (k, 2))
    return path[:, None, :] + offsets[None]


@pytest.mark.parametrize("seed", range(5))
def test_keyframes_recover_corners_of_piecewise_linear_tracks(seed):
    rng = np.random.default_rng(seed)
    # gaps in [16, 28] with dmin=8, dmax=30: any two consecutive gaps exceed dmax, so each search window
    # [t_k + dmin, t_k + dmax] holds exactly one corner (the greedy argmax would otherwise take the sharper)
    times = [0]
    for _ in range(4):
        times.append(times[-1] + int(rng.integers(16, 29)))
    corners = [rng.uniform(0, 100, 2)]
    for _ in range(4):  # turn by >= 45 degrees so every corner is a real turn
        ang = rng.uniform(np.pi / 4, np.pi * 3 / 4) * rng.choice([-1, 1])
        prev = corners[-1] - corners[-2] if len(corners) > 1 else np.array([1.0, 0.0])
        d = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]]) @ prev
        corners.append(corners[-1] + d / np.linalg.norm(d) * rng.uniform(20, 40))
    tracks = _piecewise_linear(corners, times, seed=seed)
    keys = select_keyframes(tracks, dmin=8, dmax=30, step=2)
    assert keys.tolist() == times


def test_keyframes_of_straight_motion_step_by_dmax_and_end_at_last_frame():
    tracks = np.linspace(0, 100, 71)[:, None, None] * np.ones((1, 2, 2))
    assert select_keyframes(tracks, dmin=8, dmax=30).tolist() == [0, 30, 60, 70]
    still = np.zeros((50, 2, 2))
    assert select_keyframes(still, dmin=8, dmax=30).tolist() == [0, 30, 49]
    with pytest.raises(ValueError, match="NaN"):
        select_keyframes(np.full((10, 2, 2), np.nan), 2, 5)


def test_x0_predictability_separates_consistent_from_arbitrary_keypoints():
    from relam.perception.subgoals import x0_predictability

    rng = np.random.default_rng(0)
    obj = rng.uniform(0.2, 0.8, (40, 1, 2))                       # where the object is in each demo
    follows = obj[:, 0] * 0.5 + 0.1                               # a keypoint placed relative to the object
    fixed = np.full((40, 2), 0.3)                                 # a keypoint that never moves
    arbitrary = rng.uniform(0.0, 1.0, (40, 2))                    # chosen anew in every demo
    err = x0_predictability(np.stack([follows, fixed, arbitrary], 1), obj, image_size=128)
    assert err[0] < 1e-6 and err[1] < 1e-6
    assert err[2] > 20                                            # ~ the spread of a uniform point: unpredictable
    with pytest.raises(ValueError, match="need more demos"):
        x0_predictability(np.zeros((3, 2, 2)), np.zeros((3, 1, 2)), 128)


def test_robot_keypoint_predictability_of_a_dataset_and_too_few_demos():
    from relam.perception.subgoals import SubgoalDataset, robot_keypoint_predictability

    rng = np.random.default_rng(1)
    obj = rng.uniform(0.2, 0.8, (12, 2))
    plans = [np.array([[o * 0.5 + 0.1, rng.uniform(0, 1, 2), o]]) for o in obj]   # kp0 follows, kp1 arbitrary
    ds = SubgoalDataset(task="t", first_frames=np.zeros((12, 4, 4, 3), np.uint8), task_frame=np.zeros((4, 4, 3)),
                        subgoals=plans, keyframes=[np.zeros(1)] * 12, tracks=[None] * 12, seeds=np.arange(12),
                        prompts=["robot arm", "cube"], num_keypoints=3, keypoint_prompt=np.array([0, 0, 1]))
    err = robot_keypoint_predictability(ds, 128)
    assert err.shape == (2,) and err[0] < 1e-6 and err[1] > 10
    ds.subgoals = plans[:4]
    assert robot_keypoint_predictability(ds, 128) is None
