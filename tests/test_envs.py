"""The task interface on all five tasks: camera geometry, ground truth and the scripted experts."""
import mujoco
import numpy as np
import pytest
from scipy import ndimage

from relam.envs import METAWORLD_TASKS, TASKS, make_task, task_spec

ALL = pytest.mark.parametrize("name", TASKS)
MW = pytest.mark.parametrize("name", METAWORLD_TASKS)


def _run_expert(task, seed, n_steps):
    obs = task.reset(seed)
    for _ in range(n_steps):
        obs, *_ = task.step(task.expert_action(obs))


@MW
def test_projection_matches_rendered_marker_within_1px(name, task_cache):
    """Independent of our camera maths: MuJoCo renders a small sphere at a known 3-D point; the pixels it
    covers (found from the depth change) must be centred on our projection, and back-projecting their
    rendered depth must land on the sphere, within 1 px."""
    task = task_cache(name)
    task.reset(3)
    r, cam = task._renderer, task.camera()
    rng = np.random.default_rng(0)
    hand = task.data.body("hand").xpos.copy()
    points = [task.object_position(), hand] + [hand + rng.uniform(-0.15, 0.15, 3) for _ in range(14)]
    r.enable_depth_rendering()
    try:
        r.update_scene(task.data, camera=task._cam_id)
        base = r.render().copy()
        checked = 0
        for p in points:
            r.update_scene(task.data, camera=task._cam_id)
            g = r.scene.geoms[r.scene.ngeom]
            radius = 0.012
            mujoco.mjv_initGeom(g, mujoco.mjtGeom.mjGEOM_SPHERE, np.array([radius, 0, 0]), p,
                                np.eye(3).flatten(), np.array([0, 0, 1, 1], np.float32))
            r.scene.ngeom += 1
            depth = r.render().copy()
            mask = depth < base - 1e-4
            border = mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
            if mask.sum() < 4 or border or ndimage.binary_erosion(mask).sum() == 0:
                continue  # occluded, cut by the image border, or off-screen
            rows, cols = np.nonzero(mask)
            centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
            uv, _ = cam.project(np.asarray(p)[None])
            assert np.linalg.norm(uv[0] - centroid) < 1.0, (p, uv, centroid)
            # back-projected front surface, pushed back by the radius along the view ray, is the centre
            surf = cam.backproject(np.stack([cols + 0.5, rows + 0.5], 1), depth[rows, cols])
            eye = -cam.extrinsic[:, :3].T @ cam.extrinsic[:, 3]
            ray = surf.mean(0) - eye
            est = surf.mean(0) + ray / np.linalg.norm(ray) * radius * 0.6
            assert np.linalg.norm(cam.project(est[None])[0][0] - uv[0]) < 1.0
            assert np.linalg.norm(est - p) < radius
            checked += 1
    finally:
        r.disable_depth_rendering()
    assert checked >= 4, "too few marker points were visible to test the projection"


@ALL
def test_image_is_upright(name, task_cache):
    task = task_cache(name)
    task.reset(0)
    cam = task.camera()
    p = task.object_position()
    uv, _ = cam.project(np.stack([p, p + [0, 0, 0.1]]))
    assert uv[1, 1] < uv[0, 1] - 2, "a point 10 cm higher must project to a smaller row"
    # and the rendered image agrees: the table (world/static slot 0) is in the lower half, not the top rows
    seg = task.segmentation()
    robot = task.masks()[task.spec.robot_prompt]
    obj = task.masks()[task.spec.object_prompt]
    assert robot.any() and obj.any()
    assert seg.shape == (128, 128)


@ALL
def test_masks_and_render_shapes(name, task_cache):
    task = task_cache(name)
    task.reset(1)
    img = task.render()
    assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    depth = task.depth()
    assert depth.shape == (128, 128) and np.isfinite(depth).all() and (depth > 0).all()
    masks = task.masks()
    assert list(masks) == list(task_spec(name).prompts)
    for prompt, m in masks.items():
        # the window filter (w=5) needs interior pixels: each prompt must cover a real area at frame 0
        assert ndimage.binary_erosion(m, np.ones((5, 5))).sum() >= 10, f"{prompt!r} mask too small"
    with pytest.raises(KeyError, match="no ground-truth mask"):
        task.masks(["purple elephant"])


@ALL
def test_ground_truth_tracked_points_stay_on_their_body(name, task_cache):
    task = task_cache(name)
    task.reset(2)
    seg0 = task.segmentation()
    rng = np.random.default_rng(0)
    queries, expected = [], []
    for prompt in task.spec.prompts:
        inner = ndimage.binary_erosion(task.masks(seg=seg0)[prompt], np.ones((3, 3)))
        rows, cols = np.nonzero(inner)
        pick = rng.choice(len(rows), size=min(15, len(rows)), replace=False)
        queries.append(np.stack([cols[pick] + 0.5, rows[pick] + 0.5], 1))
        expected.append(seg0[rows[pick], cols[pick]])
    tracker = task.tracker(np.concatenate(queries))
    expected = np.concatenate(expected)
    np.testing.assert_array_equal(tracker.body, expected)
    # frame 0: the tracker reproduces the query pixels exactly
    np.testing.assert_allclose(tracker.track(task.body_poses()), np.concatenate(queries), atol=1e-3)  # float32 poses in SAPIEN
    obs = task.reset(2)
    hits, total = 0, 0
    moved = 0.0
    for t in range(task.spec.max_steps):
        obs, _, _, _, info = task.step(task.expert_action(obs))
        if t % 10 == 9:
            uv = tracker.track(task.body_poses())
            # the per-step RL path (body rotation matrices, fused projection) gives the same pixels
            np.testing.assert_allclose(tracker.track_frames(*task.body_frames(tracker.body)), uv, atol=1e-6)
            seg = task.segmentation()
            inside = (uv[:, 0] >= 0) & (uv[:, 0] < 128) & (uv[:, 1] >= 0) & (uv[:, 1] < 128)
            cols, rows = uv[inside, 0].astype(int), uv[inside, 1].astype(int)
            hits += int((seg[rows, cols] == expected[inside]).sum())
            total += int(inside.sum())
            moved = max(moved, float(np.abs(uv - np.concatenate(queries)).max()))
        if info["success"]:
            break
    assert moved > 5, "the tracked points should move during an expert episode"
    # occlusion (e.g. the gripper in front of the object) explains a few misses, not many
    assert total > 0 and hits / total > 0.8, f"only {hits}/{total} tracked points on their body"


@ALL
def test_static_background_point_stays_put(name, task_cache):
    task = task_cache(name)
    obs = task.reset(4)
    seg = task.segmentation()
    rows, cols = np.nonzero(seg == 0)
    q = np.array([[cols[0] + 0.5, rows[0] + 0.5], [cols[-1] + 0.5, rows[-1] + 0.5]])
    tracker = task.tracker(q)
    for _ in range(20):
        obs, *_ = task.step(task.expert_action(obs))
    np.testing.assert_allclose(tracker.track(task.body_poses()), q, atol=1e-3)


@pytest.mark.parametrize("name,threshold", [(n, 0.95) for n in METAWORLD_TASKS] + [("PushCube", 0.9), ("PickCube", 0.9)])
def test_expert_success(name, threshold, task_cache):
    """>= 20 episodes per task, success = simulator flag ever 1 within the task's step limit."""
    task = task_cache(name)
    wins = 0
    for seed in range(100, 120):
        obs = task.reset(seed)
        for _ in range(task.spec.max_steps):
            obs, _, term, trunc, info = task.step(task.expert_action(obs))
            if info["success"]:
                wins += 1
                break
    assert wins / 20 >= threshold, f"{name}: expert succeeded {wins}/20"


@MW
def test_reset_is_deterministic_and_seeds_differ(name, task_cache):
    task = task_cache(name)
    a = task.reset(7).copy()
    img_a = task.render()
    b = task.reset(7).copy()
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(img_a, task.render())
    c = task.reset(8)
    assert not np.allclose(a, c), "different seeds must give different initial states"


@MW
def test_goal_position_is_where_the_expert_takes_the_object(name, task_cache):
    """Meta-World's goal (for goal-reading anticipation models, ``SimGoal``) is the target the goal-observable
    observation ends with, drawn per seed, and the expert's success brings the task's object to it."""
    from relam.rl.planners import goal_features

    task = task_cache(name)
    goals = []
    for seed in (3, 4):
        obs = task.reset(seed)
        goal = task.goal_position()
        np.testing.assert_allclose(obs[-3:], goal)
        start = np.linalg.norm(task.object_position() - goal)
        for _ in range(task.spec.max_steps):
            obs, _, _, _, info = task.step(task.expert_action(obs))
            if info["success"]:
                break
        assert info["success"] and np.linalg.norm(task.object_position() - goal) < 0.5 * start
        assert goal_features(task.camera(), goal)[2] > 0                       # in front of the camera
        goals.append(goal)
    assert np.abs(goals[0] - goals[1]).max() > 1e-3


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown task 'drawer-opn'.*Did you mean 'drawer-open'"):
        make_task("drawer-opn")


def test_no_usable_vulkan_device_is_a_clear_error():
    """In a fresh process (SAPIEN reads the variable once) with the Vulkan loader pointed at nothing."""
    import os
    import subprocess
    import sys
    env = dict(os.environ, VK_ICD_FILENAMES="/nonexistent/icd.json")
    code = "import relam\nfrom relam.envs import make_task\nmake_task('PushCube')"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "VulkanUnavailableError" in out.stderr
    assert "no usable Vulkan device" in out.stderr and "scripts/bootstrap.sh" in out.stderr


def test_per_step_tracking_matches_full_projection_and_loses_points_behind_the_camera():
    """``track_frames`` (plain-Python per-step path) against ``track`` (quaternions, vectorised) on a synthetic
    pinhole camera: same pixels for a moved and rotated body, NaN once the body's points are behind the camera."""
    from relam.envs.camera import CameraParams, quat_wxyz_to_matrix
    from relam.envs.tracking import GroundTruthTracker
    cam = CameraParams(np.array([[100.0, 0, 64], [0, 100.0, 64], [0, 0, 1]]), np.hstack([np.eye(3), np.zeros((3, 1))]),
                       128, 128)
    seg0 = np.zeros((128, 128), np.int64)
    seg0[:, 64:] = 1                                             # right half: body 1, left half: static background
    identity = [0, 0, 0, 1, 0, 0, 0]
    queries = np.array([[10.5, 20.5], [100.5, 30.5], [80.5, 120.5]])
    tracker = GroundTruthTracker(queries, np.full((128, 128), 2.0), seg0, cam, np.array([identity, identity]))
    c, s = np.cos(np.pi / 12), np.sin(np.pi / 12)              # 30 degrees about the optical axis
    for pose1, behind in (([0.1, -0.2, 0.3, c, 0, 0, s], False), ([0, 0, -5.0, 1, 0, 0, 0], True)):
        poses = np.array([identity, pose1], np.float64)
        fast = tracker.track_frames(poses[tracker.body, :3], quat_wxyz_to_matrix(poses[tracker.body, 3:]))
        np.testing.assert_allclose(fast, tracker.track(poses), atol=1e-9)
        np.testing.assert_allclose(fast[0], queries[0])          # the background point stays put
        assert np.isnan(fast[1:]).all() == behind and not np.isnan(fast[0]).any()
