"""Hierarchical PPO (SPEC §6): the GAE cut on a hand-computed example, and tiny end-to-end runs."""
import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from relam.config import load_config
from relam.rl.ppo import train_run


class CountingEnv(gym.Env):
    """Episodes of 4 steps; obs = steps taken; reward = 1, 2, 3, 4; the transition at step index 1 reaches a
    subgoal. Counts resets so a test can see that the GAE cut does not reset it."""

    def __init__(self):
        self.observation_space = gym.spaces.Box(0, 100, (1,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)
        self.resets, self.t, self.trace = 0, 0, []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets, self.t = self.resets + 1, 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        self.trace.append(self.t)
        return (np.array([self.t], np.float32), float(self.t), self.t == 4, False,
                {"subgoal_reached": self.t == 2})


def test_gae_cut_matches_hand_computation_and_does_not_reset_the_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path))   # SB3's default logger would leave a /tmp/SB3-<date> dir per run
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import DummyVecEnv
    from relam.rl.hrl import GAECutVecEnv

    inner = CountingEnv()
    venv = GAECutVecEnv(DummyVecEnv([lambda: inner]))
    gamma, lam = 0.9, 0.8
    model = PPO("MlpPolicy", venv, n_steps=8, batch_size=8, n_epochs=1, gamma=gamma, gae_lambda=lam, seed=0,
                device="cpu")
    model.learn(8)
    buf = model.rollout_buffer
    r, v, adv = buf.rewards[:, 0], buf.values[:, 0], buf.advantages[:, 0]
    assert np.allclose(r, [1, 2, 3, 4, 1, 2, 3, 4])
    assert inner.resets == 3 and inner.trace == [1, 2, 3, 4, 1, 2, 3, 4]  # reset only at real episode ends
    ends = {1, 3, 5, 7}  # transitions 1 and 5 reach the subgoal (cut), 3 and 7 end the episode
    expect, a = np.zeros(8), 0.0
    for t in reversed(range(8)):
        nonterminal = 0.0 if t in ends else 1.0
        nxt = v[t + 1] if t < 7 else 0.0
        a = r[t] + gamma * nxt * nonterminal - v[t] + gamma * lam * nonterminal * a
        expect[t] = a
    np.testing.assert_allclose(adv, expect, rtol=1e-5, atol=1e-5)
    # no advantage leaks across the boundary: the cut transition's advantage is its own TD error, without V(s')
    assert adv[1] == pytest.approx(r[1] - v[1], abs=1e-5)
    assert adv[0] == pytest.approx(r[0] + gamma * v[1] - v[0] + gamma * lam * (r[1] - v[1]), abs=1e-5)


def _tiny_cfg(tmp_path, **ppo):
    base = {"tasks": ["drawer-open"], "methods": ["relam-gt"], "seeds": [0], "total_steps": 400, "n_steps": 200,
            "batch_size": 50, "n_epochs": 1, "eval_every": 200, "eval_episodes": 1, "train_seed_pool": 2,
            "policy": "keypoints", "workers": 1}
    return load_config("smoke", {"results_dir": str(tmp_path / "results"), "ppo": {**base, **ppo}})


def test_tiny_ppo_run_writes_its_run_directory_and_resumes(tmp_path):
    cfg = _tiny_cfg(tmp_path)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    with pytest.raises(TypeError, match="on_eval must be None or a callable"):
        train_run(cfg, "drawer-open", "relam-gt", 0, on_eval=True)   # refused before anything is written
    assert not rd.exists()
    seen = []
    res = train_run(cfg, "drawer-open", "relam-gt", 0, on_eval=lambda step, ev: seen.append((step, ev["success_rate"])))
    assert [s for s, _ in seen] == [200, 400] and seen[-1][1] == res["final_eval"]["success_rate"]
    for name in ("config.json", "train.csv", "eval.csv", "results.json", "model.zip", "checkpoint.zip",
                 "vecnormalize.pkl"):
        assert (rd / name).exists(), name
    assert any((rd / "tb").rglob("events.out.tfevents*"))
    assert res["steps"] == 400 and 0.0 <= res["success_rate"] <= 1.0 and 0.0 <= res["last_subgoal_rate"] <= 1.0
    assert res["expert_failed_seeds"] == []   # relam-gt records the states without a ground-truth plan (none here)
    # the final evaluation is of the saved final model (not of the model before the run's last update)
    from stable_baselines3 import PPO
    from relam.rl.ppo import evaluate, make_env, make_planner
    final = evaluate(PPO.load(rd / "model.zip", device="cpu"),
                     make_env("drawer-open", make_planner("drawer-open", "relam-gt", cfg), cfg), 1)
    assert final["mean_return"] == pytest.approx(res["final_eval"]["mean_return"], rel=1e-6)
    evals = (rd / "eval.csv").read_text().splitlines()
    assert evals[0].startswith("step,success_rate,last_subgoal_rate") and len(evals) == 3  # steps 200, 400
    # where the reported policy stalls (relam.rl.ppo.run_stalls): the same episodes as its validation evaluation
    from relam.rl.ppo import run_stalls
    from relam.rl.runs import VALIDATION_SEED_OFFSET
    reported = PPO.load(rd / ("selected.zip" if (rd / "selected.zip").exists() else "model.zip"), device="cpu")
    val = evaluate(reported, make_env("drawer-open", make_planner("drawer-open", "relam-gt", cfg), cfg), 1,
                   seed_offset=VALIDATION_SEED_OFFSET, per_episode=True)["per_episode"][0]
    stall = run_stalls(cfg, "drawer-open", "relam-gt", 0, episodes=1)["episodes"][0]
    assert (stall["task_seed"], stall["success"], stall["stage"]) == (val["task_seed"], val["success"], val["stages"])
    with pytest.raises(FileNotFoundError, match="no finished PPO run"):
        run_stalls(cfg, "drawer-open", "relam-gt", 7)
    train_rows = (rd / "train.csv").read_text().splitlines()
    assert len(train_rows) == 3 and train_rows[0].startswith("step,episodes,success_rate,last_subgoal_rate")
    assert train_run(cfg, "drawer-open", "relam-gt", 0)["skipped"]
    # interrupted after its last checkpoint: resumes from it instead of training again
    (rd / "results.json").unlink()
    (rd / "model.zip").unlink()
    again = train_run(cfg, "drawer-open", "relam-gt", 0)
    assert again["resumed"] and again["steps"] == 400 and len((rd / "eval.csv").read_text().splitlines()) == 3
    # a larger budget extends the finished run from its checkpoint, keeping its history
    first_rows = (rd / "eval.csv").read_text().splitlines()
    cfg.ppo.total_steps = 600
    longer = train_run(cfg, "drawer-open", "relam-gt", 0)
    assert longer["resumed"] and longer["steps"] == 600 and [e["step"] for e in longer["evals"]] == [200, 400, 600]
    assert (rd / "eval.csv").read_text().splitlines()[:3] == first_rows
    # a smaller budget, or any other change, starts over
    cfg.ppo.total_steps = 400
    assert not train_run(cfg, "drawer-open", "relam-gt", 0)["resumed"]
    cfg.ppo.total_steps, cfg.reward.delta = 600, 0.05
    assert not train_run(cfg, "drawer-open", "relam-gt", 0)["resumed"]


def test_normalize_obs_run_evaluates_with_its_saved_statistics(tmp_path):
    from stable_baselines3 import PPO
    from relam.rl.ppo import evaluate, load_normalizer, make_env, make_planner

    cfg = _tiny_cfg(tmp_path, normalize_obs=True)
    res = train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    assert json.loads((rd / "config.json").read_text())["ppo"]["normalize_obs"] is True
    vn = load_normalizer(rd)
    assert vn.norm_obs and set(vn.obs_rms) == {"keypoints", "subgoal", "state"}
    assert vn.obs_rms["state"].count > 400 and np.all(vn.obs_rms["state"].var > 0)   # statistics were gathered
    env = make_env("drawer-open", make_planner("drawer-open", "relam-gt", cfg), cfg)
    model = PPO.load(rd / "model.zip", device="cpu")
    final = evaluate(model, env, 1, normalizer=vn)
    assert final["mean_return"] == pytest.approx(res["final_eval"]["mean_return"], rel=1e-6)
    obs, _ = env.reset(options={"task_seed": 1_000_000})
    scaled = vn.normalize_obs(obs)
    assert not np.allclose(scaled["state"], obs["state"])   # the policy really saw standardised inputs
    # off (the default): absent from the run config, so runs made before the option stay current
    cfg_off = _tiny_cfg(tmp_path / "off")
    from relam.rl.ppo import run_config
    assert "normalize_obs" not in run_config(cfg_off, "drawer-open", "relam-gt", 0)["ppo"]


def _tiny_anticipation_model(cfg, subgoal_px: float = 6.4) -> None:
    """A random tiny anticipation checkpoint for drawer-open, with the held-out error its metrics.json reports."""
    from relam.models.anticipation import AnticipationModel, AnticipationModelConfig
    from relam.models.train_anticipation import AnticipationConfig, save_checkpoint

    cfg.perception.x0_anchor = "nearest"   # 'centroid' needs the subgoal dataset; these tests have none
    acfg = AnticipationConfig(model=AnticipationModelConfig(d_model=32, n_layers=1, n_heads=2, cnn_channels=8,
                                                            cnn_grid=2, max_subgoals=4))
    torch.manual_seed(0)
    save_checkpoint(cfg.out / "anticipation" / "drawer-open" / "checkpoint.pt", AnticipationModel(acfg.model), None,
                    0, acfg, {"tasks": ["drawer-open"], "task_frames": np.zeros((1, 128, 128, 3), np.uint8)})
    # the stage threshold of generated plans is the model's held-out subgoal error (metrics.json), clipped
    (cfg.out / "anticipation" / "drawer-open" / "metrics.json").write_text(
        json.dumps({"tasks": ["drawer-open"], "val": {"subgoal_px": subgoal_px}}))


def test_tiny_pixel_policy_with_generated_subgoals(tmp_path):
    """The paper's setting end to end: image + keypoints policy, subgoals from an anticipation checkpoint."""
    cfg = _tiny_cfg(tmp_path, methods=["relam"], policy="pixels", total_steps=200, n_steps=100, eval_every=200)
    _tiny_anticipation_model(cfg)
    res = train_run(cfg, "drawer-open", "relam", 0)
    assert res["steps"] == 200 and res["policy"] == "pixels"
    saved = json.loads((cfg.out / "runs" / "drawer-open" / "relam" / "seed0" / "config.json").read_text())
    assert saved["ppo"]["policy"] == "pixels"
    assert saved["reward"]["delta"] == pytest.approx(6.4 / 128) and saved["reward"]["part_weighting"] == "part"


def test_env_reward_run_pays_the_simulators_reward_and_sees_generated_subgoals(tmp_path):
    """Method 'env-reward' (reference): Meta-World's dense reward / 10 - 1 (+ success bonus), generated plans."""
    cfg = _tiny_cfg(tmp_path, methods=["env-reward"], total_steps=200, n_steps=100, eval_every=200)
    _tiny_anticipation_model(cfg)
    res = train_run(cfg, "drawer-open", "env-reward", 0)
    saved = json.loads((cfg.out / "runs" / "drawer-open" / "env-reward" / "seed0" / "config.json").read_text())
    assert saved["reward"]["signal"] == "env-reward" and "anticipation_model" in saved   # its plans are generated
    ev = res["final_eval"]   # one episode: its return is the sum of the per-step signal
    assert ev["mean_env_return"] > 0
    assert ev["mean_return"] == pytest.approx(ev["mean_env_return"] / 10.0 - ev["mean_length"]
                                              + cfg.reward.success_bonus * ev["success_rate"], rel=1e-5)


def test_missing_anticipation_model_names_the_notebook(tmp_path):
    cfg = _tiny_cfg(tmp_path, methods=["relam"])
    with pytest.raises(FileNotFoundError, match="04_anticipation"):
        train_run(cfg, "drawer-open", "relam", 0)


def test_anchor_plan_snaps_x0_onto_its_part_and_keeps_the_motion():
    from relam.perception.keypoints import KeypointConfig
    from relam.rl.planners import AnchoredPlanner, anchor_plan, keypoint_prompt_index

    size = 32
    arm, cube = np.zeros((size, size), bool), np.zeros((size, size), bool)
    arm[2:20, 2:12] = True
    cube[20:28, 20:28] = True                                  # 8 x 8 px; interior (window 5): rows/cols 22..25
    idx = keypoint_prompt_index(["arm", "cube"], KeypointConfig(num_keypoints=4, object_share=0.25))
    assert list(idx) == [0, 0, 0, 1]
    plan = np.zeros((3, 4, 2))
    plan[0] = np.array([[5.5, 5.5], [8.5, 10.5], [6.5, 15.5], [17.5, 23.5]]) / size    # cube point 5 px left of it
    plan[1:] = plan[0] + np.array([0.1, 0.05])                                      # the generated motion
    out, shift = anchor_plan(plan, [arm, cube], idx, window=5)
    np.testing.assert_allclose(out[:, :3], plan[:, :3])        # points already on the arm are left alone
    assert shift[:3].tolist() == [0, 0, 0]
    np.testing.assert_allclose(out[0, 3] * size, [22.5, 23.5])  # nearest interior pixel of the cube
    np.testing.assert_allclose(out[1:, 3] - out[0, 3], plan[1:, 3] - plan[0, 3])   # motion unchanged
    assert shift[3] == pytest.approx(5.0)
    same, none = anchor_plan(plan, [arm, np.zeros_like(cube)], idx)                 # no mask: untouched
    np.testing.assert_allclose(same, plan)
    assert none.sum() == 0

    class Fixed:
        num_keypoints, generated = 4, True

        def __call__(self, frame, info):
            return plan

    anchored = AnchoredPlanner(Fixed(), lambda frame, info: [arm, cube], idx)
    np.testing.assert_allclose(anchored(None, {"task_seed": 0}), out)
    with pytest.raises(ValueError, match="prompt_index"):
        AnchoredPlanner(Fixed(), lambda f, i: [arm, cube], idx[:3])


def test_centroid_anchor_moves_each_keypoint_with_its_part_and_replans_from_the_corrected_x0():
    from relam.rl.planners import AnchoredPlanner, anchor_plan, mask_centroid, reference_centroids

    size = 32
    arm, cube = np.zeros((size, size), bool), np.zeros((size, size), bool)
    arm[2:20, 2:12] = True
    cube[20:28, 20:28] = True                                   # centroid (24, 24) px
    away = np.zeros_like(cube)
    away[16:24, 12:20] = True                                   # the training demos' cube: centroid (16, 20) px
    np.testing.assert_allclose(mask_centroid(cube) * size, [24.0, 24.0])
    ref = reference_centroids([[arm, away], [arm, away]])
    np.testing.assert_allclose(ref * size, [[7.0, 11.0], [16.0, 20.0]])
    idx = np.array([0, 0, 0, 1])
    plan = np.zeros((3, 4, 2))
    plan[0] = np.array([[5.5, 5.5], [8.5, 10.5], [6.5, 15.5], [15.5, 21.5]]) / size  # cube point where it is on average
    plan[1:] = plan[0] + np.array([0.1, 0.05])
    out, shift = anchor_plan(plan, [arm, cube], idx, window=5, reference=ref)
    np.testing.assert_allclose(out[:, :3], plan[:, :3])          # the arm is where it is on average
    np.testing.assert_allclose((out[:, 3] - plan[:, 3]) * size, [[8.0, 4.0]] * 3)   # moved with the cube's centroid
    assert shift.tolist() == pytest.approx([0, 0, 0, np.hypot(8, 4)])
    # the nearest-pixel rule alone would have moved it only onto the cube's edge
    edge, _ = anchor_plan(plan, [arm, cube], idx, window=5)
    assert np.linalg.norm((edge[0, 3] - out[0, 3]) * size) > 3

    calls = []

    class Model:
        num_keypoints, generated = 4, True

        def __call__(self, frame, info, x0=None):
            calls.append(None if x0 is None else np.array(x0))
            return plan if x0 is None else np.concatenate([x0[None], x0[None] + 0.2])

    replanned = AnchoredPlanner(Model(), lambda frame, info: [arm, cube], idx, reference=ref, replan=True)(None, {})
    np.testing.assert_allclose(calls[1], out[0])                 # the model continued from the corrected x^0
    np.testing.assert_allclose(replanned, np.concatenate([out[:1], out[:1] + 0.2]))
    with pytest.raises(ValueError, match="at least one demo"):
        reference_centroids([])

    # x0_anchor 'reselect': the arm's near-object keypoints are chosen again on the masks, the cube's anchored
    from relam.perception.keypoints import KeypointConfig, reselect_first_frame
    kp = KeypointConfig(num_keypoints=4, window=3, selection="near-object", min_separation=0.1)
    calls.clear()
    AnchoredPlanner(Model(), lambda frame, info: [arm, cube], idx, reference=ref, replan=True, reselect=kp)(None, {})
    chosen = reselect_first_frame([arm, cube], kp) / size
    np.testing.assert_allclose(calls[1][:3], chosen[:3])
    np.testing.assert_allclose(calls[1][3], out[0, 3])
    assert np.linalg.norm((chosen[:3] - out[0, :3]) * size, axis=-1).min() > 1   # it did move the arm's points


def test_residual_anchor_moves_a_part_only_by_the_displacement_its_x0_does_not_already_hold():
    from relam.rl.planners import AnchoredPlanner, anchor_plan, believed_centroids, reference_centroids

    size = 32
    arm, cube, away = (np.zeros((size, size), bool) for _ in range(3))
    arm[2:20, 2:12] = True
    cube[20:28, 20:28] = True                                   # this episode's cube: centroid (24, 24) px
    away[16:24, 12:20] = True                                   # the training demos' cube: centroid (16, 20) px
    ref = reference_centroids([[arm, away]])
    idx = np.array([0, 0, 0, 1])
    mean_x0 = np.array([[5.5, 5.5], [8.5, 10.5], [6.5, 15.5], [15.5, 21.5]]) / size
    reads = mean_x0.copy()
    reads[3] += np.array([8.0, 4.0]) / size                     # a model that read where the cube is
    believed = believed_centroids(ref, reads, mean_x0, idx)
    np.testing.assert_allclose(believed * size, [[7.0, 11.0], [24.0, 24.0]])
    plan = np.stack([reads, reads + 0.1])
    out, shift = anchor_plan(plan, [arm, cube], idx, window=5, reference=believed)
    np.testing.assert_allclose(out, plan)                       # nothing left to correct
    twice, _ = anchor_plan(plan, [arm, cube], idx, window=5, reference=ref)   # 'centroid' moves the cube again
    assert np.linalg.norm((twice[0, 3] - plan[0, 3]) * size) > 1.5   # pushed to the far side of the cube
    # a model that answers the mean x^0 is corrected as 'centroid' corrects it
    np.testing.assert_allclose(believed_centroids(ref, mean_x0, mean_x0, idx), ref)

    class Model:
        num_keypoints, generated = 4, True

        def __call__(self, frame, info, x0=None):
            return plan if x0 is None else np.concatenate([x0[None], x0[None] + 0.2])

    got = AnchoredPlanner(Model(), lambda f, i: [arm, cube], idx, reference=ref, replan=True, mean_x0=mean_x0)(None, {})
    np.testing.assert_allclose(got[0], reads)
    with pytest.raises(ValueError, match="reference"):
        AnchoredPlanner(Model(), lambda f, i: [arm, cube], idx, mean_x0=mean_x0)
    with pytest.raises(ValueError, match="agree on K"):
        believed_centroids(ref, reads[:3], mean_x0, idx)


def test_centroid_reference_is_the_mean_over_the_models_training_demos(tmp_path, monkeypatch):
    from relam.perception import subgoals
    from relam.rl.ppo import demo_centroids

    cfg = load_config("smoke", {"results_dir": str(tmp_path)})
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    frames[1] += 1
    demos = subgoals.SubgoalDataset(task="drawer-open", first_frames=frames, task_frame=frames[0], subgoals=[],
                                    keyframes=[], tracks=[], seeds=np.array([7, 9]), prompts=["arm", "obj"],
                                    num_keypoints=4)
    monkeypatch.setattr(subgoals.SubgoalDataset, "load", classmethod(lambda cls, path, task=None: demos))
    seen = []

    def masks(frame, info):
        seen.append((int(frame[0, 0, 0]), info["task_seed"]))
        m = np.zeros((8, 8), bool)
        m[0, info["task_seed"] - 7] = True                        # seed 7: column 0, seed 9: column 2
        return [m, np.zeros((8, 8), bool)]                        # the object is never masked

    ref = demo_centroids(cfg, "drawer-open", masks)
    assert seen == [(0, 7), (1, 9)]                              # each demo's own first frame and task seed
    np.testing.assert_allclose(ref[0] * 8, [1.5, 0.5])           # mean of column centres 0.5 and 2.5
    assert np.isnan(ref[1]).all()                                # never masked: never moved


def test_sim_movable_masks_leave_out_the_static_case():
    """The drawer's case is welded to the world: a keypoint anchored on it would never move."""
    from relam.rl.planners import SimFirstFrameMasks

    masks = SimFirstFrameMasks("drawer-open", 128)
    info = {"task_seed": 1_000_000}
    (arm_w, drawer_w), (arm_m, drawer_m) = masks(None, info), masks.movable(None, info)
    seg = masks.task.segmentation()
    assert drawer_m.any() and (drawer_m <= drawer_w).all() and drawer_m.sum() < drawer_w.sum() / 2
    assert (masks.task.model.body_weldid[seg[drawer_m]] != 0).all()              # only moving bodies
    assert (masks.task.model.body_weldid[seg[drawer_w & ~drawer_m]] == 0).all()  # what is left out is static
    assert arm_m.any() and (arm_m <= arm_w).all()
    masks.close()


def test_sim_goal_shares_the_masks_simulator_and_reads_what_its_own_would():
    """make_planner gives a goal-reading model's SimGoal the SimFirstFrameMasks' scene: one ManiSkill scene per
    planner, and interleaved calls for different task seeds must not mix up their states."""
    from relam.rl.planners import SimFirstFrameMasks, SimGoal

    masks = SimFirstFrameMasks("PickCube", 128)
    shared = SimGoal("PickCube", 128, share=masks)
    own_goal, own_masks = SimGoal("PickCube", 128), SimFirstFrameMasks("PickCube", 128)
    assert shared.task is masks.task and own_goal.task is not masks.task
    goals = []
    for seed in (1_000_000, 1_000_001, 1_000_000, 1_000_002):
        info = {"task_seed": seed}
        goal, got = shared(None, info), masks(None, info)       # goal first: the masks must still be this seed's
        np.testing.assert_allclose(goal, own_goal(None, info))
        for a, b in zip(got, own_masks(None, info)):
            np.testing.assert_array_equal(a, b)
        goals.append(goal)
    assert np.abs(goals[0] - goals[1]).max() > 1e-3 and np.allclose(goals[0], goals[2])   # random goals per seed
    with pytest.raises(ValueError, match="cannot share"):
        SimGoal("PushCube", 128, share=masks)
    shared.close()                                               # not its scene: the masks still work
    assert masks(None, {"task_seed": 1_000_003})[1].any()
    for oracle in (masks, masks, own_goal, own_masks):           # closing twice is harmless
        oracle.close()


def test_anchor_plan_moves_x0_off_a_static_part_and_nowhere_else():
    from relam.rl.planners import anchor_plan

    whole = np.zeros((32, 32), bool)
    whole[4:28, 4:28] = True                     # the part: a static case ...
    movable = np.zeros_like(whole)
    movable[4:28, 18:28] = True                  # ... and the drawer in its right part
    plan = np.array([[[10.5, 15.5], [22.5, 15.5]], [[10.5, 5.5], [22.5, 5.5]]]) / 32   # x^0 on case / on drawer
    same, _ = anchor_plan(plan, [whole], [0, 0], window=3)
    np.testing.assert_allclose(same, plan)       # without movable masks both stay
    out, shift = anchor_plan(plan, [whole], [0, 0], window=3, movable=[movable])
    np.testing.assert_allclose(out[:, 1], plan[:, 1])               # already on the drawer: untouched
    assert out[0, 0, 0] * 32 == 18.5 and out[0, 0, 1] == plan[0, 0, 1]   # nearest drawer pixel, same row
    np.testing.assert_allclose(out[1, 0] - out[0, 0], plan[1, 0] - plan[0, 0])   # its path moved along
    assert shift[0] == 8.0 and shift[1] == 0.0


def test_linear_learning_rate_anneals_to_zero_and_enters_the_run_config_only_when_on(tmp_path):
    from stable_baselines3 import PPO
    from relam.rl.ppo import run_config
    cfg = _tiny_cfg(tmp_path, lr_schedule="linear")
    train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    model = PPO.load(rd / "model.zip", device="cpu")
    # two updates (200 and 400 of 400 steps): the last one ran at lr * 0
    assert model.policy.optimizer.param_groups[0]["lr"] == 0.0
    assert model.lr_schedule(0.25) == pytest.approx(0.25 * cfg.ppo.learning_rate)
    assert run_config(cfg, "drawer-open", "relam-gt", 0)["ppo"]["lr_schedule"] == "linear"
    cfg.ppo.lr_schedule = "constant"   # the default: absent, so runs made before the option stay current
    assert "lr_schedule" not in run_config(cfg, "drawer-open", "relam-gt", 0)["ppo"]
    cfg.ppo.lr_schedule = "cosine"
    with pytest.raises(ValueError, match="lr_schedule"):
        train_run(cfg, "drawer-open", "relam-gt", 0)


def test_selected_index_takes_the_best_validation_score_and_the_later_of_ties():
    from relam.rl.ppo import selected_index
    evals = [{"step": s, "validation_success_rate": v} for s, v in ((1, 0.2), (2, 0.6), (3, 0.6), (4, 0.4))]
    assert selected_index(evals) == 2
    assert selected_index([{"step": 1}, {"step": 2}]) == 1       # no validation: the final model
    assert selected_index([{"step": 1, "validation_success_rate": 0.5}, {"step": 2}]) == 1   # last has none


def test_run_reports_the_checkpoint_chosen_on_validation_states(tmp_path, monkeypatch):
    """Validation scores are scripted (1.0 at step 200, 0.0 at 400): the run must report step 200's evaluation,
    keep its weights in selected.zip and the final weights in model.zip."""
    from stable_baselines3 import PPO
    import relam.rl.ppo as ppo
    from relam.rl.runs import EVAL_SEED_OFFSET, VALIDATION_SEED_OFFSET

    real, offsets, scripted = ppo.evaluate, [], iter([1.0, 0.0])

    def evaluate(model, env, episodes, **kwargs):
        offsets.append(kwargs.get("seed_offset", EVAL_SEED_OFFSET))
        res = real(model, env, episodes, **kwargs)
        return res | {"success_rate": next(scripted)} if kwargs.get("seed_offset") == VALIDATION_SEED_OFFSET else res

    monkeypatch.setattr(ppo, "evaluate", evaluate)
    cfg = _tiny_cfg(tmp_path, validation_episodes=1)
    res = train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    assert offsets == [EVAL_SEED_OFFSET, VALIDATION_SEED_OFFSET] * 2
    assert [e["validation_success_rate"] for e in res["evals"]] == [1.0, 0.0]
    assert res["selected_step"] == 200 and res["selected_eval"] == res["evals"][0]
    assert res["success_rate"] == res["evals"][0]["success_rate"] and res["final_eval"] == res["evals"][1]
    assert PPO.load(rd / "selected.zip", device="cpu").num_timesteps == 200
    assert PPO.load(rd / "model.zip", device="cpu").num_timesteps == 400
    assert "validation_success_rate" in (rd / "eval.csv").read_text().splitlines()[0]
    cfg.ppo.validation_episodes = 0   # off: absent from the run config, so runs made before the option stay current
    assert "validation_episodes" not in ppo.run_config(cfg, "drawer-open", "relam-gt", 0)["ppo"]


def test_diff_scale_multiplies_only_the_subgoal_difference_and_is_absent_from_configs_at_one(tmp_path):
    from relam.rl.hrl import KeypointFeatures
    from relam.rl.ppo import policy_kwargs, run_config
    box = lambda n: gym.spaces.Box(-5, 5, (n,), np.float32)  # noqa: E731
    space = gym.spaces.Dict({"keypoints": box(8), "subgoal": box(8), "state": box(4)})
    plain, scaled = KeypointFeatures(space), KeypointFeatures(space, diff_scale=10.0)
    scaled.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(0)
    kp, st = torch.rand(3, 8, generator=g), torch.rand(3, 4, generator=g)
    sg = kp + 0.04 * torch.randn(3, 8, generator=g)
    out = scaled({"keypoints": kp, "subgoal": sg, "state": st})
    by_hand = plain.points(torch.cat([kp, sg, 10.0 * (sg - kp), st], -1))
    torch.testing.assert_close(out, by_hand)
    assert not torch.allclose(out, plain({"keypoints": kp, "subgoal": sg, "state": st}))
    on_goal = {"keypoints": kp, "subgoal": kp, "state": st}       # no difference: nothing to scale
    torch.testing.assert_close(scaled(on_goal), plain(on_goal))
    cfg = _tiny_cfg(tmp_path)
    assert "features_extractor_kwargs" not in policy_kwargs(cfg.ppo)
    assert "diff_scale" not in run_config(cfg, "drawer-open", "relam-gt", 0)["ppo"]   # older runs stay current
    cfg.ppo.diff_scale = 10.0
    assert policy_kwargs(cfg.ppo)["features_extractor_kwargs"] == {"diff_scale": 10.0}
    assert run_config(cfg, "drawer-open", "relam-gt", 0)["ppo"]["diff_scale"] == 10.0


def test_expert_passes_its_own_plan_but_not_a_displaced_one(tmp_path):
    """relam.rl.plan_check: the diagnostic that found door-open's generated plans impassable (README, stage 05)."""
    from relam.rl.plan_check import expert_plan_check
    from relam.rl.ppo import make_env, make_planner

    cfg = _tiny_cfg(tmp_path)
    planner = make_planner("drawer-open", "relam-gt", cfg)
    own = expert_plan_check(make_env("drawer-open", planner, cfg), episodes=2)
    assert own["success_rate"] == 1.0 and own["stage_share"] == 1.0
    assert own["stages_passed"] == own["num_stages"] and min(own["num_stages"]) >= 1

    class Displaced:
        """The same plans with every subgoal after x^0 moved 0.3 image widths: out of the expert's way."""
        lookup = None

        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __call__(self, frame, info):
            plan = np.array(self.inner(frame, info))
            plan[1:, :, 0] += 0.3
            return plan

    moved = expert_plan_check(make_env("drawer-open", Displaced(planner), cfg), episodes=2)
    assert moved["success_rate"] == 1.0 and moved["stage_share"] == 0.0
    with pytest.raises(ValueError, match="episodes"):
        expert_plan_check(make_env("drawer-open", planner, cfg), episodes=0)


def test_stage_stalls_tell_a_policy_that_passes_the_plan_from_one_stuck_short_of_a_subgoal(tmp_path):
    """relam.rl.plan_check.stage_stalls: where a policy's episodes stop passing stages, and which keypoints hold
    them."""
    from relam.rl.env import EnvRewardWrapper
    from relam.rl.plan_check import stage_stalls
    from relam.rl.ppo import make_env, make_planner

    cfg = _tiny_cfg(tmp_path)
    env = make_env("drawer-open", make_planner("drawer-open", "relam-gt", cfg), cfg)
    task = env.env.task
    expert = stage_stalls(env, lambda obs: task.expert_action(env.env.last_state), episodes=2)
    assert expert["summary"]["success_rate"] == 1.0
    for row in expert["episodes"]:   # the expert's own plan: no stall short of the stage it ended in is reported
        assert row["success"] and row["num_stages"] >= 1 and 0 < row["stage"] <= row["num_stages"]
        assert ("miss_px" in row) == (not row["reached_last"])

    # a policy that never moves stays in stage 0, held there by the robot (the drawer has nowhere to go yet)
    idle = stage_stalls(env, lambda obs: np.zeros(env.action_space.shape, np.float32), episodes=2)
    assert idle["summary"]["mean_stages"] == 0 and idle["summary"]["success_rate"] == 0.0
    for row in idle["episodes"]:
        plan = env.planner(None, {"task_seed": row["task_seed"]})   # cached: the plan the episode played
        start = np.linalg.norm(plan[0] - plan[1], axis=-1) * cfg.env.image_size
        assert row["blocked_by_robot"] and row["miss_px"] > 0
        assert len(row["robot_px"]) + len(row["object_px"]) == len(row["keypoint_px"]) == plan.shape[1]
        # the arm never left x^0, so its closest approach is within a pixel of x^0's distance to the first subgoal
        np.testing.assert_allclose(row["keypoint_px"], start, atol=1.0)
    assert idle["summary"]["stalled_blocked_by_robot"] == 1.0
    # through the env-reward wrapper too (it renames the stage flag)
    wrapped = stage_stalls(EnvRewardWrapper(env, task.dense_reward_max),
                           lambda obs: np.zeros(env.action_space.shape, np.float32), episodes=1)
    assert wrapped["episodes"][0]["keypoint_px"] == idle["episodes"][0]["keypoint_px"]
    with pytest.raises(ValueError, match="episodes"):
        stage_stalls(env, lambda obs: None, episodes=0)


def test_gsde_run_explores_with_state_dependent_noise_and_is_absent_from_configs_when_off(tmp_path):
    from stable_baselines3 import PPO
    from relam.rl.ppo import run_config
    cfg = _tiny_cfg(tmp_path, use_sde=True, sde_sample_freq=4, log_std_init=-2.0)
    train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    saved = json.loads((rd / "config.json").read_text())["ppo"]
    assert (saved["use_sde"], saved["sde_sample_freq"], saved["log_std_init"]) == (True, 4, -2.0)
    model = PPO.load(rd / "model.zip", device="cpu")
    assert model.use_sde and model.sde_sample_freq == 4
    # gSDE's noise weights: one std per (policy feature, action dimension), started at exp(-2), moved by training
    log_std = model.policy.log_std.detach()
    assert log_std.shape == (cfg.ppo.net_arch[-1], 4)
    assert torch.allclose(log_std.mean(), torch.tensor(-2.0), atol=0.05) and not torch.all(log_std == -2.0)
    # off (the defaults): absent from the run config, so runs made before the options stay current
    off = run_config(_tiny_cfg(tmp_path / "off"), "drawer-open", "relam-gt", 0)["ppo"]
    assert not {"use_sde", "sde_sample_freq", "log_std_init"} & set(off)


def test_squashed_gsde_actions_stay_in_the_box_and_the_option_needs_gsde_and_is_absent_when_off(tmp_path):
    from stable_baselines3 import PPO
    from relam.rl.ppo import run_config
    with pytest.raises(ValueError, match="squash_output needs ppo.use_sde"):
        _tiny_cfg(tmp_path / "bad", squash_output=True)
    cfg = _tiny_cfg(tmp_path, use_sde=True, sde_sample_freq=4, log_std_init=-2.0, squash_output=True)
    train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    assert json.loads((rd / "config.json").read_text())["ppo"]["squash_output"] is True
    model = PPO.load(rd / "model.zip", device="cpu")
    assert model.policy.squash_output
    # a mean pushed far past the box: the squashed action stays inside it, with a finite log-probability, where the
    # unsquashed policy's mean would sit at 5 and be clipped
    with torch.no_grad():
        model.policy.action_net.bias.fill_(5.0)
    obs = {k: np.stack([v.sample() for _ in range(8)]) for k, v in model.observation_space.spaces.items()}
    ot, _ = model.policy.obs_to_tensor(obs)
    with torch.no_grad():
        det = model.policy._predict(ot, deterministic=True)
        dist = model.policy.get_distribution(ot)
        sample = dist.get_actions()
        logp = dist.log_prob(sample)
    assert det.abs().max() < 1.0 and det.min() > 0.5 and sample.abs().max() <= 1.0
    assert torch.isfinite(logp).all()
    # off (the default): absent from the run config, so runs made before the option stay current
    off = run_config(_tiny_cfg(tmp_path / "off", use_sde=True), "drawer-open", "relam-gt", 0)["ppo"]
    assert "squash_output" not in off


def test_target_kl_stops_an_updates_epochs_early_and_is_absent_from_configs_when_off(tmp_path):
    from stable_baselines3 import PPO
    from relam.rl.ppo import run_config
    epochs_run = {}
    for name, over in (("off", {}), ("kl", {"target_kl": 1e-9})):
        cfg = _tiny_cfg(tmp_path / name, n_epochs=3, **over)
        train_run(cfg, "drawer-open", "relam-gt", 0)
        rd = tmp_path / name / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
        epochs_run[name] = PPO.load(rd / "model.zip", device="cpu")._n_updates   # epochs over the 2 rollouts
        saved = json.loads((rd / "config.json").read_text())["ppo"]
        assert saved.get("target_kl") == over.get("target_kl")
        assert ("target_kl" in saved) == bool(over)
    # without it every rollout is trained its 3 epochs; with a KL bound no update can meet, each stops in its first
    assert epochs_run == {"off": 6, "kl": 2}
    assert "target_kl" not in run_config(_tiny_cfg(tmp_path / "x"), "drawer-open", "relam-gt", 0)["ppo"]


def test_keypoint_depth_run_observes_each_keypoints_3d_position_and_is_absent_from_configs_when_off(tmp_path):
    from stable_baselines3 import PPO
    from relam.rl.ppo import evaluate, make_env, make_planner, run_config
    cfg = _tiny_cfg(tmp_path, task_overrides={"drawer-open": {"keypoint_depth": "xyz"}})   # as cpu's door-open
    res = train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    assert json.loads((rd / "config.json").read_text())["ppo"]["keypoint_depth"] == "xyz"
    model = PPO.load(rd / "model.zip", device="cpu")
    planner = make_planner("drawer-open", "relam-gt", cfg)
    flat, deep = make_env("drawer-open", planner, cfg), make_env("drawer-open", planner, cfg, keypoint_depth="xyz")
    k = deep.K
    n_flat = flat.observation_space["state"].shape[0]
    assert model.observation_space["state"].shape == (n_flat + 3 * k,)   # the policy was built on the longer state
    # the evaluation env of the run is the one with the 3-D positions: the saved model replays its final score there
    assert evaluate(model, deep, 1)["mean_return"] == pytest.approx(res["final_eval"]["mean_return"], rel=1e-6)
    obs_flat, _ = flat.reset(options={"task_seed": 1_000_000})
    obs, _ = deep.reset(options={"task_seed": 1_000_000})
    np.testing.assert_allclose(obs["state"][:n_flat], obs_flat["state"])
    np.testing.assert_allclose(obs["state"][n_flat:], deep.tracker.points().reshape(-1), rtol=1e-6)
    # off (the default, and other tasks' runs): absent from the run config, so runs made before the option stay current
    assert "keypoint_depth" not in run_config(_tiny_cfg(tmp_path / "off"), "drawer-open", "relam-gt", 0)["ppo"]
    other = run_config(cfg, "door-open", "relam-gt", 0)["ppo"]
    assert "keypoint_depth" not in other and "task_overrides" not in other


def test_ppo_task_overrides_apply_to_their_task_only_and_refuse_grid_settings_and_unknown_keys(tmp_path):
    cfg = _tiny_cfg(tmp_path, task_overrides={"door-open": {"keypoint_depth": "xyz", "learning_rate": 1e-3}})
    door, drawer = cfg.ppo.for_task("door-open"), cfg.ppo.for_task("drawer-open")
    assert (door.keypoint_depth, door.learning_rate) == ("xyz", 1e-3) and door.task_overrides == {}
    assert (drawer.keypoint_depth, drawer.learning_rate) == (False, 3e-4)
    assert cfg.ppo.keypoint_depth is False                               # the section itself is unchanged
    with pytest.raises(ValueError, match=r"ppo.task_overrides.door-open sets \['seeds'\].*whole grid"):
        _tiny_cfg(tmp_path, task_overrides={"door-open": {"seeds": [0]}})
    with pytest.raises(ValueError, match="keypoint_dept"):
        _tiny_cfg(tmp_path, task_overrides={"door-open": {"keypoint_dept": "xyz"}})
    with pytest.raises(ValueError, match="door-opne"):
        _tiny_cfg(tmp_path, task_overrides={"door-opne": {"keypoint_depth": "xyz"}})


def _zero_action_episode(env) -> tuple[int, bool]:
    """Steps and truncation of one episode of zero actions from evaluation state 1 000 000."""
    env.reset(options={"task_seed": 1_000_000})
    steps, done = 0, False
    while not done:
        _, _, term, trunc, _ = env.step(np.zeros(env.action_space.shape, np.float32))
        steps, done = steps + 1, term or trunc
    return steps, trunc


def test_max_steps_limits_training_and_evaluation_episodes_and_is_absent_from_configs_when_off(tmp_path):
    from relam.rl.ppo import make_env, make_planner, run_config
    cfg = _tiny_cfg(tmp_path, task_overrides={"drawer-open": {"max_steps": 30}})
    res = train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    assert json.loads((rd / "config.json").read_text())["ppo"]["max_steps"] == 30
    # every training and evaluation episode stops at 30 steps (the task's own limit is 200)
    lengths = [float(row.split(",")[5]) for row in (rd / "train.csv").read_text().splitlines()[1:]]
    assert lengths and max(lengths) <= 30
    assert all(e["mean_length"] <= 30 for e in res["evals"])
    env = make_env("drawer-open", make_planner("drawer-open", "relam-gt", cfg), cfg, max_steps=30)
    assert _zero_action_episode(env) == (30, True)
    assert "max_steps" not in run_config(_tiny_cfg(tmp_path / "off"), "drawer-open", "relam-gt", 0)["ppo"]
    for bad in (0, 2.5, "500"):
        with pytest.raises(ValueError, match="ppo.max_steps must be a positive whole number"):
            _tiny_cfg(tmp_path / "bad", max_steps=bad)
        with pytest.raises(ValueError, match="max_steps must be a positive whole number"):
            make_env("drawer-open", env.planner, cfg, max_steps=bad)    # refused by make_task, before any simulator


def test_action_repeat_holds_actions_counts_env_steps_and_is_absent_from_configs_when_off(tmp_path):
    from stable_baselines3 import PPO
    from relam.rl.env import ActionRepeat
    from relam.rl.ppo import make_env, make_planner, run_config
    # the wrapper: rewards add up, a subgoal reached on an inner step is kept, the episode stops where it ends
    inner = CountingEnv()
    env = ActionRepeat(inner, 3)
    env.reset()
    _, r, term, _, info = env.step(np.zeros(1, np.float32))
    assert (r, term, info["subgoal_reached"], inner.t) == (6.0, False, True, 3)   # raised at t = 2, not at t = 3
    _, r, term, _, info = env.step(np.zeros(1, np.float32))
    assert (r, term, info["subgoal_reached"], inner.trace) == (4.0, True, False, [1, 2, 3, 4])
    # a run: budgets, evaluations and curves count env steps; SB3 counts policy steps; episodes hold half the steps
    cfg = _tiny_cfg(tmp_path, task_overrides={"drawer-open": {"action_repeat": 2, "max_steps": 30}})
    res = train_run(cfg, "drawer-open", "relam-gt", 0)
    rd = tmp_path / "results" / "runs" / "drawer-open" / "relam-gt" / "seed0"
    assert json.loads((rd / "config.json").read_text())["ppo"]["action_repeat"] == 2
    assert res["steps"] == 400 and [e["step"] for e in res["evals"]] == [200, 400]
    assert PPO.load(rd / "model.zip", device="cpu").num_timesteps == 200
    rows = [row.split(",") for row in (rd / "train.csv").read_text().splitlines()[1:]]
    assert [int(r[0]) for r in rows] == [200, 400] and max(float(r[5]) for r in rows) <= 15
    assert all(e["mean_length"] <= 15 for e in res["evals"])
    env = make_env("drawer-open", make_planner("drawer-open", "relam-gt", cfg), cfg, max_steps=30, action_repeat=2)
    assert _zero_action_episode(env) == (15, True)
    assert "action_repeat" not in run_config(_tiny_cfg(tmp_path / "off"), "drawer-open", "relam-gt", 0)["ppo"]
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="ppo.action_repeat must be a positive whole number"):
            _tiny_cfg(tmp_path / "bad", action_repeat=bad)
    with pytest.raises(ValueError, match=r"total_steps=400, eval_every=200, n_steps=200 must be multiples of it"):
        _tiny_cfg(tmp_path / "bad", action_repeat=3)
    with pytest.raises(ValueError, match="action_repeat must be a positive whole number"):
        ActionRepeat(inner, 0)


def test_keypoint_aliases_measure_the_reward_distance_from_hand_places_around_the_grasp(tmp_path):
    """relam.rl.plan_check.keypoint_aliases: the check that found door-open's stuck hands along the camera's ray."""
    from relam.rl.env import EnvRewardWrapper
    from relam.rl.plan_check import keypoint_aliases
    from relam.rl.ppo import make_env, make_planner

    cfg = _tiny_cfg(tmp_path)
    env = make_env("drawer-open", make_planner("drawer-open", "relam-gt", cfg), cfg)
    out = keypoint_aliases(env, task_seed=7, offsets_cm=[(0, 0, 0), (0, 0, 10), (0, -10, 10)])
    at, above, front = out["probes"]
    assert at["gap_cm"] < 2.0 and 8.0 < above["gap_cm"] < 12.0 and 12.0 < front["gap_cm"] < 16.0
    assert above["reached_cm"][2] > 8.0 and front["reached_cm"][1] < -8.0   # the hand went where it was sent
    # the grasp's own place reads (nearly) the grasp's keypoints; 10 cm above and in front of it reads further
    assert at["d_px"] < 0.5 * above["d_px"] and at["d_px"] < 0.5 * front["d_px"]
    assert at["max_px"] >= at["d_px"] and above["max_px"] >= above["d_px"]
    assert out["near_min_px"] == at["d_px"]
    assert out["far_min_px"] == min(above["d_px"], front["d_px"])
    assert out["alias_ratio"] == pytest.approx(out["far_min_px"] / out["near_min_px"])
    assert 0 < out["reference_step"] < env.env.task.spec.max_steps and len(out["reference_hand"]) == 3
    assert out["task_seed"] == 7   # the expert opens the drawer from it, so no later seed was needed
    import matplotlib.pyplot as plt
    from relam.viz import plot_keypoint_aliases
    fig, ax = plt.subplots()
    plot_keypoint_aliases(ax, out)   # the two probes at the grasp's depth, the grasp, the far minimum
    assert [len(c.get_offsets()) for c in ax.collections] == [2, 1, 1]
    with pytest.raises(ValueError, match="y = 0"):
        plot_keypoint_aliases(ax, dict(out, probes=[front]))
    plt.close(fig)
    with pytest.raises(ValueError, match="near_cm"):
        keypoint_aliases(env, offsets_cm=[(0, 0, 0)], near_cm=0)
    with pytest.raises(ValueError, match="tries"):
        keypoint_aliases(env, offsets_cm=[(0, 0, 0)], tries=0)
    with pytest.raises(TypeError, match="TaskEnv"):
        keypoint_aliases(EnvRewardWrapper(env, env.env.task.dense_reward_max), offsets_cm=[(0, 0, 0)])
