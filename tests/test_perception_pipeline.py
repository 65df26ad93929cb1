"""Perception on real data: demo files -> subgoal dataset, and any video file -> keypoints/keyframes."""
import cv2
import numpy as np
import pytest

import relam.perception.subgoals as subgoals
from relam.config import load_config
from relam.data.demos import collect_demos
from relam.data.rollout import rollout
from relam.data.store import DatasetFileError
from relam.envs import make_task
from relam.perception import PerceptionError, make_tracker
from relam.perception.segmenters import SimSegmenter
from relam.perception.trackers import LKTracker, SimTracker
from relam.perception.video import read_video, subgoals_from_video


@pytest.fixture(scope="module")
def rendered_demo():
    task = make_task("drawer-open", image_size=128)
    ep = rollout(task, seed=11)
    task.close()
    return ep


def test_own_video_file_to_keypoints_and_keyframes(rendered_demo, tmp_path):
    ep = rendered_demo
    path = tmp_path / "demo.mp4"
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 20, (128, 128))
    for f in ep.frames:
        w.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    w.release()
    video = read_video(path)
    assert video.shape == ep.frames.shape
    prompts = ["robot arm", "green drawer"]
    seg = SimSegmenter(masks=dict(zip(prompts, ep.groundtruth["masks0"])))
    sg = subgoals_from_video(path, prompts, segmenter=seg, tracker="lk")
    kp = sg.keypoints
    assert kp.points.shape == (4, 2) and kp.tracks.shape == (len(video), 4, 2)
    for point, p_idx in zip(kp.points, kp.prompt_index):  # every keypoint lies in its prompt's mask
        assert ep.groundtruth["masks0"][p_idx][int(point[1]), int(point[0])]
    assert sg.keyframes[0] == 0 and sg.keyframes[-1] == len(video) - 1 and len(sg.keyframes) >= 3
    np.testing.assert_allclose(sg.subgoals, kp.tracks[sg.keyframes] / 128)
    # LK on the decoded (lossy) mp4 follows the ground truth of the same points closely most of the time
    gt = SimTracker(ep.groundtruth["depth0"], ep.groundtruth["seg0"], ep.groundtruth["camera"],
                    ep.groundtruth["body_poses"])(None, kp.points)[0]
    err = np.linalg.norm(kp.tracks - gt, axis=-1)
    assert np.median(err) < 5.0, f"median LK error {np.median(err):.2f}px"  # broken tracking: tens of px


def test_lk_tracks_a_translating_texture_exactly():
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur((rng.uniform(0, 255, (200, 200, 3))).astype(np.uint8), (5, 5), 1.5)
    video = np.stack([tex[20 + t: 84 + t, 30 + 2 * t: 94 + 2 * t] for t in range(10)])  # content moves (-2, -1)/frame
    q = np.array([[20.5, 20.5], [40.5, 30.5]])
    tracks, vis = LKTracker()(video, q)
    expected = q[None] + np.arange(10)[:, None, None] * np.array([-2.0, -1.0])
    assert vis.all()
    np.testing.assert_allclose(tracks, expected, atol=0.5)  # frame-to-frame drift over 9 steps


def test_bad_video_inputs_are_clear_errors(tmp_path):
    one = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(PerceptionError, match="at least 2 frames"):
        LKTracker()(one, np.array([[5.0, 5.0]]))
    with pytest.raises(PerceptionError, match="NaN"):
        LKTracker()(np.zeros((3, 32, 32, 3), np.uint8), np.array([[np.nan, 5.0]]))
    with pytest.raises(PerceptionError, match="does not exist"):
        read_video(tmp_path / "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(PerceptionError, match="could not decode"):
        read_video(tmp_path / "junk.mp4")
    with pytest.raises(PerceptionError, match="unknown tracker 'raft'"):
        make_tracker("raft")


def test_subgoal_dataset_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    cfg = load_config("smoke", {"results_dir": str(tmp_path), "env": {"tasks": ["button-press-wall"]},
                                "demos": {"n_demos": 3}})
    collect_demos(cfg, "button-press-wall", progress=False)
    real = subgoals.extract_from_demo_set
    calls = {"n": 0}

    def failing(pc, ds, i, spec, reference=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise PerceptionError("tracker returned NaN (simulated)")
        return real(pc, ds, i, spec, reference)

    monkeypatch.setattr(subgoals, "extract_from_demo_set", failing)
    with pytest.raises(PerceptionError):
        subgoals.build_subgoal_dataset(cfg, "button-press-wall", progress=False)
    out = subgoals.subgoal_path(cfg.out, "button-press-wall")
    assert not out.exists() and not list(out.parent.glob("*"))
    monkeypatch.setattr(subgoals, "extract_from_demo_set", real)
    summary = subgoals.build_subgoal_dataset(cfg, "button-press-wall", progress=False)
    data = subgoals.SubgoalDataset.load(out)
    assert summary["demos"] == 3 and len(data.subgoals) == 3 and data.first_frames.shape == (3, 128, 128, 3)
    for sg, kf, tr in zip(data.subgoals, data.keyframes, data.tracks):
        assert kf[0] == 0 and kf[-1] == len(tr) - 1 and sg.shape == (len(kf), 4, 2)
        np.testing.assert_allclose(sg, tr[kf], atol=1e-6)
    assert subgoals.build_subgoal_dataset(cfg, "button-press-wall", progress=False)["skipped"]
    out.write_bytes(out.read_bytes()[:1000])
    with pytest.raises(DatasetFileError, match="truncated or corrupt"):
        subgoals.SubgoalDataset.load(out)


def test_subgoal_dataset_uses_the_tasks_own_keypoint_count(tmp_path):
    own = {"perception": {"task_overrides": {"button-press-wall": {"keypoints": {"num_keypoints": 6}}}},
           "anticipation": {"task_overrides": {"button-press-wall": {"model": {"num_keypoints": 6}}}}}
    cfg = load_config("smoke", {"results_dir": str(tmp_path), "env": {"tasks": ["button-press-wall"]},
                                "demos": {"n_demos": 2}, **own})
    collect_demos(cfg, "button-press-wall", progress=False)
    summary = subgoals.build_subgoal_dataset(cfg, "button-press-wall", progress=False)
    data = subgoals.SubgoalDataset.load(subgoals.subgoal_path(cfg.out, "button-press-wall"))
    assert not summary["skipped"] and data.num_keypoints == 6
    assert all(sg.shape[1:] == (6, 2) for sg in data.subgoals)
    # back to the profile's K: the file's settings no longer match, so it is rebuilt with 4
    cfg = load_config("smoke", {"results_dir": str(tmp_path), "env": {"tasks": ["button-press-wall"]},
                                "demos": {"n_demos": 2}})
    assert not subgoals.build_subgoal_dataset(cfg, "button-press-wall", progress=False)["skipped"]
    assert subgoals.SubgoalDataset.load(subgoals.subgoal_path(cfg.out, "button-press-wall")).num_keypoints == 4


def test_robot_reference_gives_every_demo_and_the_experts_plans_the_same_arm_points(tmp_path):
    """``keypoints.robot_reference``: every demo's robot keypoints are those nearest one reference selection, stored
    with the dataset; Meta-World's arm starts in one pose, so their x^0 agree exactly, and ``relam-gt``'s expert
    planner chooses them too. A dataset built without it is refused where a config asks for it."""
    from relam.rl.ppo import make_planner

    task = "door-open"
    over = {"results_dir": str(tmp_path), "env": {"tasks": [task]}, "demos": {"n_demos": 4, "unseen": 1}}
    def keypoints(on):   # the profile's K with the option on or off (a task override is replaced whole)
        return {"perception": {"task_overrides": {task: {"keypoints": {"num_keypoints": 8, "robot_reference": on}}}}}

    plain = load_config("smoke", {**over, **keypoints(False)})
    collect_demos(plain, task, progress=False)
    subgoals.build_subgoal_dataset(plain, task, progress=False)
    with pytest.raises(PerceptionError, match="built without perception.keypoints.robot_reference"):
        subgoals.robot_reference_of(subgoals.subgoal_path(plain.out, task))
    cfg = load_config("smoke", {**over, **keypoints(True)})
    summary = subgoals.build_subgoal_dataset(cfg, task, progress=False)
    assert not summary["skipped"] and 0 <= summary["robot_reference_changed"] <= 4
    data = subgoals.SubgoalDataset.load(subgoals.subgoal_path(cfg.out, task))
    n_robot = int((data.keypoint_prompt == 0).sum())
    assert data.robot_reference.shape == (n_robot, 2)
    for sg in data.subgoals:
        np.testing.assert_allclose(sg[0, :n_robot] * 128, data.robot_reference, atol=1e-4)
    planner = make_planner(task, "relam-gt", cfg)
    try:
        plan = planner(None, {"task_seed": int(data.seeds[0])})
        np.testing.assert_allclose(plan[0, :n_robot] * 128, data.robot_reference, atol=1e-4)
    finally:
        planner.close()
    # notebook 04's unseen demos are extracted with the training demos' reference, not their own medoid
    from relam.models.unseen_demos import collect_unseen
    unseen = collect_unseen(cfg, task, progress=False)
    np.testing.assert_allclose(unseen.robot_reference, data.robot_reference)
    assert unseen.settings["robot_reference"] == np.round(data.robot_reference, 3).tolist()
    # a given reference is used (and recorded) instead of the medoid
    shifted = data.robot_reference + 6.0
    assert not subgoals.build_subgoal_dataset(cfg, task, progress=False, robot_reference=shifted)["skipped"]
    moved = subgoals.SubgoalDataset.load(subgoals.subgoal_path(cfg.out, task))
    np.testing.assert_allclose(moved.robot_reference, shifted)
    x0 = np.stack([sg[0, :n_robot] for sg in moved.subgoals]) * 128
    assert np.abs(x0 - x0[:1]).max() < 1e-3 and np.abs(x0[0] - data.robot_reference).max() > 1
    with pytest.raises(ValueError, match="robot_reference is off"):
        subgoals.build_subgoal_dataset(plain, task, progress=False, robot_reference=shifted)


def test_expert_planner_warns_once_and_lists_the_states_where_the_expert_fails():
    """``relam-gt`` has no ground truth where Meta-World's scripted expert fails (door-open task seed 1 000 005, one
    of Table 4's states, and 3 000 008, a validation state): the plan is the failed rollout's, one warning names the
    first such state, and ``failed_seeds`` lists every one; states where the expert succeeds are not listed."""
    import warnings

    from relam.rl.planners import ExpertPlanner

    planner = ExpertPlanner("door-open")
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            planner(None, {"task_seed": 1_000_000})
            assert planner.failed_seeds == set() and not [w for w in seen if "does not succeed" in str(w.message)]
            failed_plan = planner(None, {"task_seed": 1_000_005})
            planner(None, {"task_seed": 3_000_008})
        warned = [str(w.message) for w in seen if "does not succeed" in str(w.message)]
        assert len(warned) == 1 and "task seed 1000005" in warned[0] and "failed_seeds" in warned[0]
        assert planner.failed_seeds == {1_000_005, 3_000_008}
        assert np.isfinite(failed_plan).all() and len(failed_plan) >= 2   # a plan all the same: the state is kept
    finally:
        planner.close()
