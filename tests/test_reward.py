"""The ReLAM reward (SPEC §5): reward shapes, the stage machine, relabelling, and the gymnasium wrapper."""
import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest

from relam.reward import REWARD_FUNCTIONS, RewardConfig, StageMachine, keypoint_weights, relabel, reward_function
from relam.rl.env import ReLAMRewardWrapper


@pytest.mark.parametrize("name", REWARD_FUNCTIONS)
def test_reward_functions_share_range_and_decrease(name):
    cfg = RewardConfig(function=name)
    f = reward_function(cfg)
    d = np.linspace(0, 2 * cfg.d_max, 401)
    r = f(d)
    assert f(0.0) == pytest.approx(0.0, abs=1e-12)
    assert f(cfg.d_max) == pytest.approx(-1.0, abs=1e-12)
    assert np.all(r <= 1e-12) and np.all(r >= -1 - 1e-12)
    assert np.all(np.diff(r) <= 1e-12)                       # monotone non-increasing
    assert np.all(np.diff(r[d <= cfg.d_max]) < 0)             # strictly decreasing inside [0, d_max]
    assert np.allclose(r[d >= cfg.d_max], -1.0)               # clipped beyond d_max
    # the scalar path (one Python float per env step) agrees with the vectorised one, negative d included
    np.testing.assert_allclose([f(float(x)) for x in np.r_[-0.1, d]], f(np.r_[-0.1, d]), atol=1e-12)


def test_piecewise_slopes_grow_towards_the_goal():
    cfg = RewardConfig()
    f = reward_function(cfg)
    near = (f(0.0) - f(0.01)) / 0.01
    far = (f(0.4) - f(0.41)) / 0.01
    assert near == pytest.approx(2 / cfg.d_max) and far == pytest.approx(2 / (3 * cfg.d_max))
    assert near > 2.5 * far


def _plan():
    # x0, g1, g2 for K = 2 points
    return np.array([[[0.1, 0.1], [0.5, 0.5]],
                     [[0.3, 0.1], [0.5, 0.5]],
                     [[0.3, 0.1], [0.7, 0.5]]])


def test_stage_machine_advances_pays_bonuses_and_ends_on_env_success():
    cfg = RewardConfig()
    m = StageMachine(_plan(), cfg)
    f = reward_function(cfg)
    s = m.step(np.array([[0.1, 0.1], [0.5, 0.5]]))           # at x0: 0.1 from g1 on point 0
    assert not s.stage_reached and s.stage == 0 and s.reward == pytest.approx(float(f(0.1)))
    s = m.step(np.array([[0.3, 0.1], [0.5, 0.5]]))           # on g1
    assert s.stage_reached and s.stage == 1 and s.reward == pytest.approx(1.0)
    s = m.step(np.array([[0.3, 0.1], [0.7, 0.5]]))           # on g2 = last subgoal: bonus, episode goes on
    assert s.stage_reached and s.reached_last and not s.terminate and s.reward == pytest.approx(1.0)
    s = m.step(np.array([[0.3, 0.1], [0.7, 0.5]]))           # no second bonus for staying there
    assert not s.stage_reached and s.reward == pytest.approx(0.0)
    s = m.step(np.array([[0.3, 0.1], [0.72, 0.5]]), env_success=True)
    assert s.success and s.terminate and s.reward == pytest.approx(float(f(0.01)) + 10.0)


def test_max_criterion_needs_every_point_but_mean_does_not():
    # point 0 on target, point 1 0.06 away: mean 0.03 < delta, max 0.06 > delta
    pts = np.array([[0.3, 0.1], [0.56, 0.5]])
    assert not StageMachine(_plan(), RewardConfig(criterion="max")).step(pts).stage_reached
    assert StageMachine(_plan(), RewardConfig(criterion="mean")).step(pts).stage_reached


def test_part_criterion_needs_every_part_on_average_and_no_part_makes_up_for_another():
    plan = np.zeros((2, 4, 2))                 # x^0 and one subgoal: 3 robot points and 1 object point at 0
    parts = [0, 0, 0, 1]
    cfg = dict(delta=0.04, part_weighting="part")

    def reached(criterion, pts, parts=parts):
        return StageMachine(plan, RewardConfig(criterion=criterion, **cfg), parts).step(np.asarray(pts)).stage_reached

    # one robot point 0.07 off, the other two on target: the robot's mean 0.023 < delta, its max 0.07 > delta
    one_off = [[0.07, 0], [0, 0], [0, 0], [0.01, 0]]
    assert reached("part", one_off) and not reached("max", one_off)
    # the arm exactly on its subgoal, the object 0.06 away: the part-weighted mean (0.03) passes, 'part' does not
    object_behind = [[0, 0], [0, 0], [0, 0], [0.06, 0]]
    assert reached("mean", object_behind) and not reached("part", object_behind)
    # parts unknown: every keypoint is its own part, so 'part' is 'max'
    assert not reached("part", one_off, parts=None)
    assert reached("part", [[0.03, 0], [0, 0.03], [0, 0], [0.03, 0]], parts=None)


def test_robot_mean_criterion_averages_the_arm_but_holds_every_object_point():
    plan = np.zeros((3, 5, 2))                 # x^0 and two subgoals: 3 robot points and 2 object points at 0
    parts = [0, 0, 0, 1, 1]
    cfg = RewardConfig(criterion="robot-mean", delta=0.04, part_weighting="part")

    def reached(pts, parts=parts):
        return StageMachine(plan, cfg, parts).step(np.asarray(pts, float)).stage_reached

    # one arm point 0.07 off (the arm's mean 0.023): passes, where 'max' does not
    arm_off = [[0.07, 0], [0, 0], [0, 0], [0.01, 0], [0, 0.01]]
    assert reached(arm_off)
    strict = StageMachine(plan, RewardConfig(criterion="max", delta=0.04), parts)
    assert not strict.step(np.asarray(arm_off)).stage_reached
    # one object point 0.05 off, the other object point and the arm on target: the object's mean (0.025) would pass
    # 'part', not 'robot-mean'
    one_object_point_off = [[0, 0], [0, 0], [0, 0], [0.05, 0], [0, 0]]
    assert not reached(one_object_point_off)
    part = StageMachine(plan, replace(cfg, criterion="part"), parts)
    assert part.step(np.asarray(one_object_point_off)).stage_reached
    # the arm as a whole too far (mean 0.05) with the objects on target: not reached
    assert not reached([[0.05, 0], [0.05, 0], [0, 0.05], [0, 0], [0, 0]])
    # parts unknown: 'max'
    assert not reached(arm_off, parts=None)
    # criterion_value is what step() thresholds, for every criterion (stage_stalls reports it)
    d = [0.07, 0.0, 0.0, 0.01, 0.01]
    values = {"max": 0.07, "part": 0.07 / 3, "robot-mean": 0.07 / 3, "mean": 0.5 * 0.07 / 3 + 0.5 * 0.01}
    for crit, want in values.items():
        assert StageMachine(plan, replace(cfg, criterion=crit), parts).criterion_value(d) == pytest.approx(want)
    assert StageMachine(plan, replace(cfg, criterion="mean", part_weighting="max"), parts).criterion_value(d) == 0.07
    # the machine advances through both stages with the arm 0.06 off on one point each time
    m = StageMachine(plan, cfg, parts)
    assert m.step(np.asarray(arm_off)).stage_reached and m.k == 1
    assert m.step(np.asarray(arm_off)).reached_last


def test_generated_plans_can_have_their_own_criterion():
    cfg = RewardConfig(criterion="max", criterion_generated="part", delta_generated=0.05)
    assert cfg.for_plan(generated=False).criterion == "max" and cfg.for_plan(generated=True).criterion == "part"
    assert RewardConfig(delta_generated=0.05).for_plan(True).criterion == "max"   # None: the common criterion
    assert cfg.settings(True)["criterion"] == "part" and "criterion_generated" not in cfg.settings(True)
    assert cfg.settings(False) == RewardConfig().settings(False)            # ground-truth runs stay current
    with pytest.raises(ValueError, match="criterion_generated"):
        RewardConfig(criterion_generated="median")


def test_subgoal_success_source_fires_on_last_subgoal_and_env_source_ignores_it():
    on_g1, on_g2 = np.array([[0.3, 0.1], [0.5, 0.5]]), np.array([[0.3, 0.1], [0.7, 0.5]])
    m = StageMachine(_plan(), RewardConfig(success_source="subgoals"))
    m.step(on_g1)
    s = m.step(on_g2)
    assert s.success and s.terminate and s.reward == pytest.approx(11.0)
    m = StageMachine(_plan(), RewardConfig(success_source="env"))
    m.step(on_g1)
    s = m.step(on_g2, env_success=False)
    assert not s.success and not s.terminate


def test_relabel_matches_hand_computed_rewards():
    cfg = RewardConfig()
    f = reward_function(cfg)
    tracks = np.array([[[0.1, 0.1], [0.5, 0.5]],     # s0
                       [[0.2, 0.1], [0.5, 0.5]],     # s1: 0.1 from g1 on point 0 -> mean 0.05
                       [[0.3, 0.1], [0.5, 0.5]],     # s2: on g1 -> stage bonus
                       [[0.3, 0.1], [0.6, 0.5]],     # s3: 0.1 from g2 on point 1 -> mean 0.05
                       [[0.3, 0.1], [0.7, 0.5]],     # s4: on g2, env success on this transition
                       [[0.3, 0.1], [0.7, 0.5]]])    # s5: after the end
    out = relabel(tracks, _plan(), np.array([0, 0, 0, 1, 1], bool), cfg)
    expect = [f(0.05), 1.0, f(0.05), 1.0 + 10.0, 0.0]
    assert np.allclose(out["reward"], expect)
    assert out["stage"].tolist() == [0, 1, 1, 1, 1]
    assert out["stage_reached"].tolist() == [False, True, False, True, False]
    assert out["success"].tolist() == [False, False, False, True, False]
    assert out["terminal"].tolist() == [False, False, False, True, True]


def test_empty_plan_and_nan_keypoints_warn_but_stay_defined():
    with pytest.warns(RuntimeWarning, match="empty subgoal plan"):
        m = StageMachine(_plan()[:1])
    s = m.step(np.array([[0.2, 0.2], [0.4, 0.4]]), env_success=True)
    assert s.reward == pytest.approx(10.0) and s.terminate and m.num_stages == 0
    m = StageMachine(_plan())
    m.step(np.array([[0.2, 0.1], [0.5, 0.5]]))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        s = m.step(np.array([[np.nan, np.nan], [0.5, 0.5]]))
    assert np.isfinite(s.reward) and s.distance == pytest.approx(0.05)  # held at the last finite position
    m = StageMachine(_plan())
    with pytest.warns(RuntimeWarning):
        s = m.step(np.array([[np.nan, np.nan], [0.5, 0.5]]))          # never seen: counts as d_max away
    assert s.distance == pytest.approx(0.25) and np.isfinite(s.reward)


def test_bad_reward_config_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown reward function"):
        RewardConfig(function="cubic")
    with pytest.raises(ValueError, match="criterion"):
        RewardConfig(criterion="median")


# --- the gymnasium wrapper --------------------------------------------------------------------------------

class PointEnv(gym.Env):
    """A 2-D point that the action moves; renders a 32 px frame; success when it reaches (0.8, 0.5)."""
    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self):
        self.render_mode = "rgb_array"
        self.observation_space = gym.spaces.Box(-5.0, 5.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1, 1, (2,), np.float32)
        self.resets, self.pos = 0, np.zeros(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.resets += 1
        self.pos = np.array([0.2, 0.5]) + self.np_random.uniform(-0.01, 0.01, 2)
        return self.pos.astype(np.float32), {"task_seed": 0}

    def step(self, action):
        self.pos = self.pos + 0.05 * np.clip(action, -1, 1)
        success = bool(np.linalg.norm(self.pos - [0.8, 0.5]) < 0.03)
        return self.pos.astype(np.float32), 0.0, False, False, {"success": success}

    def render(self):
        return np.zeros((32, 32, 3), np.uint8)


class PointTracker:
    needs_frames = False

    def __init__(self, env):
        self.env = env

    def start(self, frame, uv, info=None):
        pass

    def update(self, frame):
        return np.repeat(self.env.pos[None] * 32, 2, axis=0)


def _point_wrapper(plan=None, **kw):
    env = PointEnv()
    plan = np.array([[[0.2, 0.5]] * 2, [[0.5, 0.5]] * 2, [[0.8, 0.5]] * 2]) if plan is None else plan
    return ReLAMRewardWrapper(env, lambda frame, info: plan, PointTracker(env), num_keypoints=2,
                              **{"keypoint_parts": [0, 1], **kw}), env


class DensePointEnv(PointEnv):
    """PointEnv with a dense reward 5 * x (up to 5)."""

    def step(self, action):
        obs, _, term, trunc, info = super().step(action)
        return obs, 5.0 * float(self.pos[0]), term, trunc, info


def test_env_reward_wrapper_pays_the_simulators_reward_in_relams_form():
    from relam.rl.env import EnvRewardWrapper
    env = DensePointEnv()
    plan = np.array([[[0.2, 0.5]] * 2, [[0.5, 0.5]] * 2, [[0.8, 0.5]] * 2])
    inner = ReLAMRewardWrapper(env, lambda frame, info: plan, PointTracker(env), num_keypoints=2, keypoint_parts=[0, 1])
    wrapped = EnvRewardWrapper(inner, dense_max=5.0)
    obs, _ = wrapped.reset(seed=0)
    subgoals, stages = [obs["subgoal"].copy()], []
    for _ in range(30):
        obs, r, term, trunc, info = wrapped.step(np.array([1.0, 0.0]))
        assert r == pytest.approx(env.pos[0] - 1.0 + (10.0 if info["success"] else 0.0), abs=1e-6)
        assert "subgoal_reached" not in info   # hierarchical PPO must not cut GAE here
        stages.append(info["stage_reached"])
        subgoals.append(obs["subgoal"].copy())
        if term:
            break
    assert term and info["success"] and sum(stages) == 2   # the stage machine still ran ...
    assert np.allclose(subgoals[0], [0.5, 0.5] * 2) and np.allclose(subgoals[-1], [0.8, 0.5] * 2)   # ... and showed it
    with pytest.raises(ValueError, match="success_source"):
        EnvRewardWrapper(ReLAMRewardWrapper(env, lambda frame, info: plan, PointTracker(env), num_keypoints=2,
                                            keypoint_parts=[0, 1], reward=RewardConfig(success_source="subgoals")), 5.0)


def test_wrapper_passes_gymnasium_env_checker():
    from gymnasium.utils.env_checker import check_env
    wrapped, _ = _point_wrapper(image_obs=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # the checker reports problems as warnings
        warnings.filterwarnings("ignore", message=".*different from the unwrapped version.*")
        check_env(wrapped, skip_render_check=True)


def test_wrapper_rewards_stage_progress_and_reports_it():
    wrapped, env = _point_wrapper()
    obs, info = wrapped.reset(seed=0)
    assert set(obs) == {"keypoints", "subgoal", "state"} and info["num_stages"] == 2
    assert np.allclose(obs["subgoal"], [0.5, 0.5] * 2)
    stages, total = [], 0.0
    for _ in range(30):
        obs, r, term, trunc, info = wrapped.step(np.array([1.0, 0.0]))
        total += r
        stages.append(info["subgoal_reached"])
        if term:
            break
    assert term and info["success"] and info["relam_success"] and info["reached_last"]
    assert sum(stages) == 2 and env.resets == 1
    assert 5.0 < total < 12.0  # 2 stage bonuses + success bonus, minus the distance terms on the way


def test_wrapper_on_a_simulated_task_with_the_sim_tracker(task_cache):
    """Real Meta-World task, fixed plan on the arm: the sim tracker's keypoints follow the arm."""
    from relam.rl.env import SimOnlineTracker, TaskEnv
    task = task_cache("drawer-open")
    env = TaskEnv(task, seed_pool=[3])
    task.reset(3)
    arm = np.argwhere(task.masks()["robot arm"])[:, ::-1] + 0.5
    x0 = arm[[0, len(arm) // 2]] / task.image_size
    plan = np.stack([x0, x0 + [0.0, 0.2]])
    wrapped = ReLAMRewardWrapper(env, lambda f, i: plan, SimOnlineTracker(task), num_keypoints=2, keypoint_parts=[0, 1])
    obs, info = wrapped.reset(seed=0)
    assert info["task_seed"] == 3 and np.allclose(obs["keypoints"], x0.ravel(), atol=1e-5)
    for _ in range(10):
        obs, r, term, trunc, info = wrapped.step(np.array([0.0, 0.0, -1.0, 0.0]))  # hand moves down
    assert -1.0 <= r <= 0.0
    assert np.mean(obs["keypoints"].reshape(2, 2)[:, 1] - x0[:, 1]) > 0.005  # image y grows when the arm lowers


def test_generated_plans_get_their_own_threshold():
    cfg = RewardConfig(delta=0.04, delta_generated=0.06)
    assert cfg.for_plan(generated=False).delta == 0.04
    assert cfg.for_plan(generated=True).delta == 0.06
    assert RewardConfig(delta_generated=None).for_plan(generated=True).delta == 0.04
    assert RewardConfig(delta_generated=0.10).for_plan(generated=True).delta == 0.10   # above 'model''s clip: allowed
    pts = np.array([[0.05, 0.0], [0.0, 0.0]])          # one point 0.05 from its target
    plan = np.zeros((2, 2, 2))
    assert not StageMachine(plan, cfg.for_plan(False)).step(pts).stage_reached
    assert StageMachine(plan, cfg.for_plan(True)).step(pts).stage_reached
    assert "delta_generated" not in cfg.settings(True) and cfg.settings(True)["delta"] == 0.06
    with pytest.raises(ValueError, match="delta_generated"):
        RewardConfig(delta_generated=-1.0)
    with pytest.raises(ValueError, match="delta_generated"):
        RewardConfig(delta_generated="models")


def test_model_threshold_is_the_models_plan_error_clipped_to_delta_and_the_maximum():
    cfg = RewardConfig(delta=0.04, delta_generated="model", delta_generated_max=0.06)
    assert cfg.for_plan(True, 0.01).delta == 0.04            # a precise model: delta
    assert cfg.for_plan(True, 0.05).delta == pytest.approx(0.05)
    assert cfg.for_plan(True, 0.3).delta == 0.06             # a poor model: the maximum
    assert cfg.for_plan(False, 0.3).delta == 0.04            # ground-truth plans never use it
    assert cfg.settings(True, 0.05)["delta"] == pytest.approx(0.05)
    assert "delta_generated_max" not in cfg.settings(True, 0.05)
    with pytest.raises(ValueError, match="held-out subgoal error"):
        cfg.for_plan(True)                                   # no metrics: a clear error, not a silent default
    with pytest.raises(ValueError, match="delta_generated_max"):
        RewardConfig(delta=0.05, delta_generated_max=0.04)


def test_held_out_plan_error_reads_a_runs_metrics(tmp_path):
    import json

    from relam.models.train_anticipation import held_out_plan_error
    assert held_out_plan_error(tmp_path, "drawer-open", 128) is None          # unfinished run
    (tmp_path / "metrics.json").write_text(json.dumps({"tasks": ["drawer-open", "PushCube"], "val": {
        "subgoal_px": 20.0, "per_task": {"drawer-open": {"subgoal_px": 6.4}, "PushCube": {"subgoal_px": 33.6}}}}))
    assert held_out_plan_error(tmp_path, "drawer-open", 128) == pytest.approx(0.05)
    assert held_out_plan_error(tmp_path, "door-open", 128) is None
    (tmp_path / "metrics.json").write_text(json.dumps({"tasks": ["door-open"], "val": {"subgoal_px": 12.8}}))
    assert held_out_plan_error(tmp_path, "door-open", 128) == pytest.approx(0.1)


def test_part_weighting_gives_each_part_an_equal_share_of_the_distance():
    plan = np.array([[[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.5, 0.5]]] * 2)
    pts = plan[1].copy()
    pts[3, 0] += 0.1                                          # arm on its target, the object 0.1 short
    plain = StageMachine(plan, RewardConfig()).step(pts)
    part = StageMachine(plan, RewardConfig(part_weighting="part"), parts=[0, 0, 0, 1]).step(pts)
    assert plain.distance == pytest.approx(0.1 / 4)
    assert part.distance == pytest.approx(0.1 / 2)            # the object is one part of two
    assert part.reward < plain.reward
    pts = plan[1].copy()
    pts[0, 0] += 0.1                                          # one of three arm points off
    assert StageMachine(plan, RewardConfig(part_weighting="part"), parts=[0, 0, 0, 1]).step(pts).distance \
        == pytest.approx(0.1 / 6)
    # relabelling uses the same weights
    out = relabel(np.stack([plan[0], pts]), plan, np.zeros(1, bool), RewardConfig(part_weighting="part"), [0, 0, 0, 1])
    assert out["reward"][0] == pytest.approx(float(reward_function(RewardConfig())(0.1 / 6)))


def test_object_share_sets_the_objects_share_of_the_distance():
    plan = np.array([[[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.5, 0.5], [0.6, 0.6]]] * 2)
    parts = [0, 0, 0, 1, 2]                                   # three arm points, two objects of one point each
    off = plan[1].copy()
    off[3, 0] += 0.1                                          # the first object 0.1 short, all else on target
    cfg = RewardConfig(part_weighting="part", object_share=0.75)
    assert StageMachine(plan, cfg, parts).step(off).distance == pytest.approx(0.1 * 0.75 / 2)
    assert StageMachine(plan, RewardConfig(part_weighting="part"), parts).step(off).distance == pytest.approx(0.1 / 3)
    arm = plan[1].copy()
    arm[0, 0] += 0.1                                          # one of three arm points off: the robot's 1/4 / 3
    assert StageMachine(plan, cfg, parts).step(arm).distance == pytest.approx(0.1 * 0.25 / 3)
    assert sum(keypoint_weights(cfg, parts, 5)) == pytest.approx(1.0)
    # the stage criterion does not change with the weights
    assert StageMachine(plan, cfg, parts).step(plan[1] + 0.01).stage_reached
    for bad in (0, 1, 1.5, -0.2, True, "half"):
        with pytest.raises(ValueError, match="object_share"):
            RewardConfig(part_weighting="part", object_share=bad)
    with pytest.raises(ValueError, match="part_weighting"):
        RewardConfig(part_weighting="keypoint", object_share=0.75)
    with pytest.raises(ValueError, match="object part"):
        StageMachine(plan, cfg, [0, 0, 0, 0, 0])
    assert "object_share" not in RewardConfig(part_weighting="part").settings(generated=False)
    assert RewardConfig(part_weighting="part", object_share=0.75).settings(generated=False)["object_share"] == 0.75


def test_part_weighting_without_parts_is_the_plain_mean_and_the_wrapper_warns():
    plan = np.array([[[0.1, 0.1], [0.2, 0.2], [0.3, 0.3], [0.5, 0.5]]] * 2)
    pts = plan[1] + np.array([0.0, 0.0, 0.0, 0.1])[:, None] * [1, 0]
    assert StageMachine(plan, RewardConfig(part_weighting="part")).step(pts).distance == pytest.approx(0.1 / 4)
    with pytest.raises(ValueError, match="K = 4"):
        StageMachine(plan, RewardConfig(part_weighting="part"), parts=[0, 1])
    with pytest.raises(ValueError, match="part_weighting"):
        RewardConfig(part_weighting="object")
    with pytest.warns(RuntimeWarning, match="keypoint_parts"):
        ReLAMRewardWrapper(gym.make("Pendulum-v1", render_mode="rgb_array"), lambda f, i: plan, None, 4,
                           RewardConfig(part_weighting="part"), image_size=128)


def test_part_weighting_enters_run_settings_only_when_on():
    assert "part_weighting" not in RewardConfig(part_weighting="keypoint").settings(False)
    assert RewardConfig(part_weighting="part").settings(True, 0.05)["part_weighting"] == "part"


def test_wrapper_clips_keypoint_observations_and_survives_a_lost_point():
    """The policy sees coordinates inside [COORD_LOW, COORD_HIGH]; a NaN point reads COORD_LOW in the observation,
    and the reward stays finite (the stage machine holds the point's last finite position)."""
    from relam.rl.env import COORD_HIGH, COORD_LOW
    wrapped, env = _point_wrapper()
    wrapped.reset(seed=0)
    readings = iter([[[np.nan, 16.0], [1000.0, -1000.0]], [[np.nan, np.nan], [16.0, 16.0]]])
    wrapped.tracker.update = lambda frame: np.array(next(readings))
    with pytest.warns(RuntimeWarning, match="non-finite"):
        obs, r, *_ = wrapped.step(np.zeros(2))
    assert obs["keypoints"].dtype == np.float32
    assert obs["keypoints"].tolist() == [COORD_LOW, 0.5, COORD_HIGH, COORD_LOW] and np.isfinite(r)
    with pytest.warns(RuntimeWarning, match="non-finite"):
        obs, r, *_ = wrapped.step(np.zeros(2))
    assert obs["keypoints"].tolist() == [COORD_LOW, COORD_LOW, 0.5, 0.5] and np.isfinite(r)


def test_max_weighting_rewards_the_farthest_keypoint():
    plan = np.zeros((2, 4, 2))
    pts = np.zeros((4, 2))
    pts[0, 0] = 0.2                      # one point far, the others on their subgoals
    cfg = RewardConfig(part_weighting="max")
    s = StageMachine(plan, cfg, parts=[0, 0, 0, 1]).step(pts)
    assert s.distance == pytest.approx(0.2) and s.reward == pytest.approx(float(reward_function(cfg)(0.2)))
    part = StageMachine(plan, RewardConfig(part_weighting="part"), parts=[0, 0, 0, 1]).step(pts)
    assert part.distance == pytest.approx(0.2 / 6) and s.reward < part.reward
    # moving the far point closer raises the reward
    closer = pts.copy()
    closer[0, 0] = 0.1
    assert StageMachine(plan, cfg).step(closer).reward > s.reward
    assert "part_weighting" in cfg.settings(False)
    with pytest.raises(ValueError, match="unknown part_weighting"):
        RewardConfig(part_weighting="median")


def test_stage_machine_distances_match_the_vectorised_eq3():
    """The stage machine's per-step distances (plain Python) equal ``keypoint_distance`` with the part weights."""
    from relam.reward import keypoint_distance, keypoint_weights
    rng = np.random.default_rng(0)
    plan = rng.uniform(0, 1, (3, 4, 2))
    cfg = RewardConfig(delta=1e-6)                       # never advances: every step measures against g^1
    m = StageMachine(plan, cfg, parts=[0, 0, 0, 1])
    w = np.array(keypoint_weights(cfg, [0, 0, 0, 1], 4))
    for _ in range(5):
        pts = rng.uniform(-0.5, 1.5, (4, 2))
        d = keypoint_distance(pts, plan[1])
        s = m.step(pts)
        assert s.distance == pytest.approx(float(w @ d)) and s.max_distance == pytest.approx(float(d.max()))


def test_reward_task_overrides_resolve_per_task_and_are_checked():
    from relam.config import load_config
    from relam.rl.ppo import reward_config

    cfg = load_config("smoke", {"reward": {"task_overrides": {"PickCube": {"delta_generated": 0.06}}}})
    pick, push = reward_config(cfg, "PickCube", True, 0.03), reward_config(cfg, "PushCube", True, 0.05)
    assert pick.delta == pytest.approx(0.06) and push.delta == pytest.approx(0.05)   # PushCube keeps 'model'
    assert reward_config(cfg, "PickCube", False).delta == cfg.reward.delta            # ground-truth plans: delta
    # the settings saved beside runs are per task and carry no overrides, so other tasks' runs stay current
    plain = load_config("smoke")
    assert cfg.reward.for_task("PushCube").settings(True, 0.05) == plain.reward.for_task("PushCube").settings(True, 0.05)
    assert cfg.reward.for_task("PickCube").settings(True, 0.03)["delta"] == pytest.approx(0.06)
    with pytest.raises(ValueError, match="for_task"):
        cfg.reward.settings(True, 0.03)
    with pytest.raises(ValueError, match="reward"):
        load_config("smoke", {"reward": {"task_overrides": {"PickCube": {"no_such_setting": 1}}}})
    with pytest.raises(ValueError):
        load_config("smoke", {"reward": {"task_overrides": {"NoSuchTask": {"delta": 0.05}}}})
    # a task's own VALUES get the section's checks at load time, as the section's own values do
    with pytest.raises(ValueError, match="unknown stage criterion_generated 'robotmean'"):
        load_config("smoke", {"reward": {"task_overrides": {"door-open": {"criterion_generated": "robotmean"}}}})
    with pytest.raises(ValueError, match="d_max, delta"):
        load_config("smoke", {"reward": {"task_overrides": {"door-open": {"delta": -0.1}}}})
    door = load_config("smoke", {"reward": {"task_overrides": {"door-open": {"criterion_generated": "robot-mean"}}}})
    assert reward_config(door, "door-open", True, 0.04).criterion == "robot-mean"
    assert reward_config(door, "door-open", False).criterion == "max"                  # ground-truth plans keep 'max'


def test_object_progress_pays_the_objects_way_through_the_whole_plan_and_telescopes():
    # robot point (part 0) stays at its targets; the object point (part 1) goes 0.1 -> 0.3 -> 0.5 along x
    plan = np.zeros((3, 2, 2))
    plan[:, 1, 0] = [0.1, 0.3, 0.5]                      # x^0, g^1, g^2: the object travels 0.4
    cfg = RewardConfig(object_progress=4.0)
    on, off = StageMachine(plan, cfg, parts=[0, 1]), StageMachine(plan, RewardConfig(), parts=[0, 1])
    path = [0.1, 0.2, 0.45, 0.35, 0.35, float("nan")]    # ahead of g^1 (0.45), back, still, then lost
    extra = []
    for x in path:
        p = np.array([[0.0, 0.0], [x, 0.0]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            a, b = on.step(p), off.step(p)
        assert (a.stage, a.stage_reached) == (b.stage, b.stage_reached)   # the stage machine is untouched
        extra.append(a.reward - b.reward)
    # first step sets the potential; then 4 * (move toward the LAST subgoal) / 0.4, backwards negative, lost: 0
    np.testing.assert_allclose(extra, [0.0, 1.0, 2.5, -1.0, 0.0, 0.0], atol=1e-9)
    assert sum(extra) == pytest.approx(4.0 * (0.35 - 0.1) / 0.4)               # telescopes: start to last seen
    with pytest.raises(ValueError, match="needs the keypoints' parts"):
        StageMachine(plan, cfg)
    with pytest.raises(ValueError, match="needs the keypoints' parts"):
        StageMachine(plan, cfg, parts=[0, 0])
    with pytest.raises(ValueError, match="object_progress"):
        RewardConfig(object_progress=-1.0)
    assert "object_progress" not in RewardConfig().settings(False)             # off: older runs stay current
    assert cfg.settings(True, 0.05)["object_progress"] == 4.0


def test_object_lookahead_measures_an_object_ahead_of_the_plan_against_its_nearest_later_place():
    # robot point (part 0) with targets at the origin; the object point (part 1) is planned 0.1 -> 0.2 -> 0.3 -> 0.5
    plan = np.zeros((4, 2, 2))
    plan[:, 1, 0] = [0.1, 0.2, 0.3, 0.5]
    cfg = RewardConfig(object_lookahead=True)
    arm_off = [0.0, 0.3]                                  # the arm 0.3 off its subgoal: no stage can pass
    for x, ahead in [(0.05, 0.15), (0.25, 0.05), (0.3, 0.0), (0.45, 0.05)]:
        p = np.array([arm_off, [x, 0.0]])
        on = StageMachine(plan, cfg, parts=[0, 1]).step(p)
        off = StageMachine(plan, RewardConfig(), parts=[0, 1]).step(p)
        assert on.stage == off.stage == 0
        assert off.distance == pytest.approx(0.5 * 0.3 + 0.5 * abs(x - 0.2))       # the current subgoal's place only
        assert on.distance == pytest.approx(0.5 * 0.3 + 0.5 * ahead)                # nearest of g^1, g^2, g^3
        assert on.reward >= off.reward
    # with the arm on its subgoal, the object at g^2's place passes g^1 and g^2, but never a place it is behind
    on, off = StageMachine(plan, cfg, parts=[0, 1]), StageMachine(plan, RewardConfig(), parts=[0, 1])
    at_g2 = np.array([[0.0, 0.0], [0.3, 0.0]])
    assert [on.step(at_g2).stage for _ in range(3)] == [1, 2, 2]
    assert [off.step(at_g2).stage for _ in range(3)] == [0, 0, 0]
    assert on.step(at_g2).distance == pytest.approx(0.5 * 0.2)                     # g^3: still 0.2 to go
    with pytest.raises(ValueError, match="object_lookahead needs the keypoints' parts"):
        StageMachine(plan, cfg, parts=[0, 0])
    assert "object_lookahead" not in RewardConfig().settings(False)            # off: older runs stay current
    assert cfg.settings(True, 0.05)["object_lookahead"] is True


def test_robot_lookahead_measures_the_arm_against_its_nearest_pose_from_the_current_subgoal_on():
    # two robot points (part 0) that move together 0 -> 0.1 -> 0.2 along x; one object point (part 1) 0.2 -> 0.3 -> 0.5
    plan = np.zeros((4, 3, 2))
    plan[1:, 0, 0] = plan[1:, 1, 0] = [0.0, 0.1, 0.2]
    plan[1:, 1, 1] = 0.05                                  # the second robot point rides 0.05 above the first
    plan[:, 2, 0] = [0.1, 0.2, 0.3, 0.5]
    both = RewardConfig(object_lookahead=True, robot_lookahead=True)
    arm_only = RewardConfig(robot_lookahead=True)
    arm_at_g2 = [[0.1, 0.0], [0.1, 0.05]]
    # the arm at g^2's pose, the object still at g^1's place: the arm costs nothing, g^1 passes on the arm's
    # later pose (the object is on its own place), and g^2 then needs the object too
    m = StageMachine(plan, arm_only, parts=[0, 0, 1])
    s = m.step(np.array(arm_at_g2 + [[0.2, 0.0]]))
    assert (s.distance, s.stage) == (pytest.approx(0.0), 1)
    s = m.step(np.array(arm_at_g2 + [[0.2, 0.0]]))
    assert s.stage == 1 and s.distance == pytest.approx(0.5 * 0.1)                  # the object 0.1 short of g^2
    off = StageMachine(plan, RewardConfig(), parts=[0, 0, 1]).step(np.array(arm_at_g2 + [[0.2, 0.0]]))
    assert off.stage == 0 and off.distance == pytest.approx(0.5 * 0.1)             # the arm 0.1 from g^1
    # arm and object both at g^3: with both options the stages pass one per step up to the last
    m = StageMachine(plan, both, parts=[0, 0, 1])
    at_g3 = np.array([[0.2, 0.0], [0.2, 0.05], [0.5, 0.0]])
    steps = [m.step(at_g3) for _ in range(3)]
    assert [s.stage_reached for s in steps] == [True, True, True] and steps[-1].reached_last
    # the pose decides as a whole: one point near a later pose does not pull the other along
    m = StageMachine(plan, arm_only, parts=[0, 0, 1])
    s = m.step(np.array([[0.2, 0.0], [0.0, 0.05], [0.2, 0.0]]))
    assert s.distance == pytest.approx(0.5 * 0.1)     # every pose is 0.1 off on average; point by point it'd be 0
    assert s.stage == 0
    with pytest.raises(ValueError, match="robot_lookahead needs the keypoints' parts"):
        StageMachine(plan, arm_only)
    assert "robot_lookahead" not in RewardConfig().settings(False)


def test_lookahead_horizon_limits_the_lookahead_to_the_next_subgoals():
    plan = np.zeros((4, 2, 2))
    plan[:, 1, 0] = [0.1, 0.2, 0.3, 0.5]                  # the object's places; the robot's targets at the origin
    p = np.array([[0.0, 0.3], [0.5, 0.0]])                # the object already at g^3's place, the arm off
    d = {h: StageMachine(plan, RewardConfig(object_lookahead=True, lookahead_horizon=h), parts=[0, 1]).step(p).distance
         for h in (None, 1, 2)}
    assert d[None] == d[2] == pytest.approx(0.5 * 0.3)                        # g^3 within reach: the object pays 0
    assert d[1] == pytest.approx(0.5 * 0.3 + 0.5 * 0.2)                       # g^1 and g^2 only: 0.2 short of g^3
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="lookahead_horizon"):
            RewardConfig(lookahead_horizon=bad)
    assert "lookahead_horizon" not in RewardConfig().settings(False)
