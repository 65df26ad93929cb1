"""Anticipation model (SPEC §4): shapes, causality, learning, checkpoints, generation, DINOv2 loading."""
import json

import numpy as np
import pytest
import torch

from relam.models.anticipation import AnticipationModel, AnticipationModelConfig
from relam.models.encoders import DINOv2Encoder, EncoderUnavailableError, FeatureCache
from relam.models.train_anticipation import (AnticipationConfig, Sample, evaluate, Features, load_model,
                                             loss_fn, plan_errors, run_config_json, train)
from relam.perception.subgoals import SubgoalDataset

TINY = dict(d_model=32, n_layers=2, n_heads=2, dropout=0.0, cnn_channels=16, cnn_grid=2, cnn_points=2, max_subgoals=8)


def _model(**kw):
    torch.manual_seed(0)
    return AnticipationModel(AnticipationModelConfig(**{**TINY, **kw}))


def _images(b, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, 32, 32, 3), generator=g, dtype=torch.uint8)


def test_output_shapes():
    m = _model()
    feats = m.encode_images(_images(3), _images(3, 1))
    assert feats.shape == (3, 2, 4 + 2, 16)   # 2 x 2 grid tokens + 2 point tokens
    pred, stop = m(feats, torch.rand(3, 5, 4, 2))
    assert pred.shape == (3, 5, 4, 2) and stop.shape == (3, 4)


@pytest.mark.parametrize("readout,coord_skip", [(False, False), (True, False), (True, True)])
def test_causality_later_keyframes_do_not_change_earlier_outputs(readout, coord_skip):
    m = _model(readout=readout, coord_skip=coord_skip).eval()
    if coord_skip:
        with torch.no_grad():
            m.skip_weight.normal_(0, 0.3)
    feats = m.encode_images(_images(2), _images(2, 1))
    goals = torch.rand(2, 6, 4, 2)
    changed = goals.clone()
    changed[:, 3:] += torch.randn(2, 3, 4, 2)
    p1, s1 = m(feats, goals)
    p2, s2 = m(feats, changed)
    # outputs for x^0..x^3 use inputs x^0..x^2 only; stop j uses x^0..x^j
    torch.testing.assert_close(p1[:, :4], p2[:, :4])
    torch.testing.assert_close(s1[:, :3], s2[:, :3])
    assert not torch.allclose(p1[:, 4:], p2[:, 4:]), "later outputs must depend on the changed keyframes"


@pytest.mark.parametrize("readout,coord_skip", [(False, False), (True, False), (True, True)])
def test_residual_form_and_generate_matches_teacher_forcing(readout, coord_skip):
    """generate() with its KV cache must reproduce the full teacher-forced pass fed its own outputs."""
    m = _model(readout=readout, coord_skip=coord_skip).eval()
    with torch.no_grad():
        if coord_skip:    # a different map per step, so a step mix-up between the two passes shows
            m.skip_weight.normal_(0, 0.3)
            m.skip_bias.normal_(0, 0.05)
        m.head_res.weight.normal_(0, 0.1)
        m.head_abs.weight.normal_(0, 0.1)
        m.head_stop.bias.fill_(-10.0)  # never stop
    feats = m.encode_images(_images(2), _images(2, 1))
    plans = m.generate(feats, max_len=5)
    assert [p.shape for p in plans] == [(5, 4, 2)] * 2
    pred, _ = m(feats, torch.from_numpy(np.stack(plans)))
    np.testing.assert_allclose(pred.detach().numpy(), np.stack(plans), atol=1e-5)


def test_generate_from_given_x0_continues_as_teacher_forcing_from_it():
    """generate(x0=...) keeps the given x^0 and anticipates the later subgoals from it (the teacher-forced pass
    fed that x^0 and the generated continuation gives the same outputs); another x^0 gives another plan."""
    m = _model(readout=True).eval()
    with torch.no_grad():
        m.head_res.weight.normal_(0, 0.1)
        m.head_stop.bias.fill_(-10.0)
        m.kp_mlp[0].weight.mul_(5.0)   # make the plan depend visibly on the keypoints it is fed
    feats = m.encode_images(_images(2), _images(2, 1))
    x0 = torch.rand(2, 4, 2)
    plans = m.generate(feats, max_len=4, x0=x0)
    np.testing.assert_allclose(np.stack(plans)[:, 0], x0.numpy(), atol=1e-6)
    pred, _ = m(feats, torch.from_numpy(np.stack(plans)))
    np.testing.assert_allclose(pred[:, 1:].detach().numpy(), np.stack(plans)[:, 1:], atol=1e-5)
    other = m.generate(feats, max_len=4, x0=x0 + 0.3)
    assert not np.allclose(np.stack(other)[:, 1:] - 0.3, np.stack(plans)[:, 1:], atol=1e-3), \
        "later subgoals must be anticipated from x^0, not merely shifted with it"


def test_first_frame_readout_reaches_every_keyframe_token_but_not_the_task_frame():
    m = _model(readout=True).eval()
    with torch.no_grad():
        m.head_abs.weight.normal_(0, 0.1)
    feats = m.encode_images(_images(1), _images(1, 1))
    goals = torch.rand(1, 4, 4, 2)
    base = m.first_frame_readout(feats)
    other = feats.clone()
    other[:, 1] += 1.0                                   # only the task-indication frame changes
    torch.testing.assert_close(m.first_frame_readout(other), base)
    other = feats.clone()
    other[:, 0] += torch.randn_like(other[:, 0])         # the first frame changes
    assert (m.first_frame_readout(other) - base).abs().min() > 0
    assert not torch.allclose(m(feats, goals)[0][:, 0], m(other, goals)[0][:, 0])


def test_x0_warmup_loss_trains_only_the_first_subgoal():
    m = _model()
    samples = _tiny_dataset()
    feats = Features(m, np.zeros((1, 32, 32, 3), np.uint8), None)
    loss, mse, bce = loss_fn(m, feats(samples), samples, 1.0, x0_only=True)
    loss.backward()
    assert np.isnan(bce) and mse > 0
    assert m.head_abs.bias.grad.abs().sum() > 0
    assert m.head_res.weight.grad is None or m.head_res.weight.grad.abs().sum() == 0
    assert m.head_stop.weight.grad is None or m.head_stop.weight.grad.abs().sum() == 0
    m.zero_grad()
    full, _, bce = loss_fn(m, feats(samples), samples, 1.0)
    full.backward()
    assert bce > 0 and m.head_stop.weight.grad.abs().sum() > 0


def test_x0_weight_scales_only_the_x0_term_of_the_split_loss_and_needs_it():
    m = _model().eval()                                  # no dropout: both passes see the same network
    samples = _tiny_dataset()
    feats = Features(m, np.zeros((1, 32, 32, 3), np.uint8), None)(samples)
    with torch.no_grad():
        x0 = loss_fn(m, feats, samples, 1.0, x0_only=True)[1]
        one = loss_fn(m, feats, samples, 1.0, split_x0=True)
        ten = loss_fn(m, feats, samples, 1.0, split_x0=True, x0_weight=10.0)
    assert x0 > 0 and one[2] == pytest.approx(ten[2])
    assert ten[1] == pytest.approx(one[1] + 9.0 * x0, rel=1e-5)
    assert float(ten[0]) == pytest.approx(float(one[0]) + 9.0 * x0, rel=1e-5)
    with pytest.raises(ValueError, match="split_x0_loss"):
        AnticipationConfig(x0_weight=10.0)
    with pytest.raises(ValueError, match="> 0"):
        AnticipationConfig(split_x0_loss=True, x0_weight=0.0)


def test_generate_stops_by_stop_logit_and_respects_max_length():
    m = _model().eval()
    feats = m.encode_images(_images(1), _images(1, 1))
    with torch.no_grad():
        m.head_stop.bias.fill_(10.0)  # stop right after x^1
    assert len(m.generate(feats, max_len=6)[0]) == 2
    with torch.no_grad():
        m.head_stop.bias.fill_(-10.0)  # never stop
    assert len(m.generate(feats, max_len=6)[0]) == 6
    assert len(m.generate(feats)[0]) == m.cfg.max_subgoals


def _tiny_dataset(n=6, seed=0):
    """Each demo's subgoals are a deterministic function of its first frame (a bright square's position)."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        img = np.zeros((32, 32, 3), np.uint8)
        x, y = rng.integers(4, 24, 2)
        img[y:y + 6, x:x + 6] = 255
        start = np.array([[x, y], [x + 6, y], [x, y + 6], [x + 6, y + 6]], np.float32) / 32
        m = 2 + i % 2
        goals = np.stack([start + 0.1 * j * np.array([1, -0.5], np.float32) for j in range(m + 1)])
        samples.append(Sample("toy", img, 0, goals))
    return samples


def test_tiny_model_overfits_tiny_dataset():
    torch.manual_seed(0)
    m = AnticipationModel(AnticipationModelConfig(**{**TINY, "cnn_grid": 4, "d_model": 64}))
    samples = _tiny_dataset()
    task_frames = np.zeros((1, 32, 32, 3), np.uint8)
    feats = Features(m, task_frames, None)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    for _ in range(600):
        loss, _, _ = loss_fn(m, feats(samples), samples, 1.0, split_x0=True)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)      # as train() does
        opt.step()
    err = evaluate(m, feats, samples, image_size=32)
    assert err["x0_px"] < 0.5 and err["subgoal_px"] < 1.0 and err["len_err"] == 0, err


def _later_subgoal_error(train_s, test_s, **options) -> float:
    """Train a tiny model with ``options`` on blank-image toy samples (lr 1e-2, 300 steps) and return the mean over
    ``test_s`` of the worst keypoint error (px at 128) of its later subgoals, generated from the true x^0."""
    from relam.models.train_anticipation import batch_goals
    torch.manual_seed(0)
    m = AnticipationModel(AnticipationModelConfig(**{**TINY, **options}))
    if m.cfg.goal_input:
        m.set_goal_statistics(batch_goals(train_s, m))
    feats = Features(m, np.zeros((1, 32, 32, 3), np.uint8), None)
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(300):
        loss, _, _ = loss_fn(m, feats(train_s), train_s, 1.0, split_x0=True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    plans = m.generate(feats(test_s), max_len=3, x0=torch.from_numpy(np.stack([s.subgoals[0] for s in test_s])),
                       goal=batch_goals(test_s, m))
    return float(np.mean([np.abs(p[1:] - s.subgoals[1:]).max() for p, s in zip(plans, test_s)]) * 128)


def test_coordinate_skip_learns_a_subgoal_that_is_a_linear_function_of_x0():
    """Subgoal x^1 puts keypoints 0-2 at keypoint 3's x^0 (a gripper going to where the cube is), x^2 lifts them;
    the images say nothing. The per-step coordinate skip fits it on 32 random scenes and predicts it on new ones
    from a given x^0; the same model without the skip, trained alike, does not."""
    rng = np.random.default_rng(0)

    def scenes(n):
        out = []
        for _ in range(n):
            x0 = rng.uniform(0.2, 0.8, (4, 2)).astype(np.float32)
            x1 = np.repeat(x0[3:], 4, 0) + np.array([[0, -0.05], [-0.03, 0], [0.03, 0], [0, 0]], np.float32)
            out.append(Sample("toy", np.zeros((32, 32, 3), np.uint8), 0, np.stack([x0, x1, x1 - [0, 0.2]])))
        return out

    train_s, test_s = scenes(32), scenes(8)
    errors = {skip: _later_subgoal_error(train_s, test_s, coord_skip=skip) for skip in (True, False)}
    assert errors[True] < 2.0 and errors[False] > 2 * errors[True], errors


def _goal_scenes(rng, n):
    """Toy scenes whose later subgoals depend on a goal the images do not show: x^1 moves every keypoint to the
    goal's pixel (u, v) plus a fixed offset, x^2 lifts them by an amount set by the goal's depth."""
    out = []
    for _ in range(n):
        x0 = rng.uniform(0.2, 0.8, (4, 2)).astype(np.float32)
        goal = np.array([*rng.uniform(0.2, 0.8, 2), rng.uniform(0.4, 0.8)], np.float32)
        x1 = goal[None, :2] + np.array([[0, -0.05], [-0.03, 0], [0.03, 0], [0, 0]], np.float32)
        x2 = x1 - [0, 0.5 * goal[2] - 0.1]
        out.append(Sample("toy", np.zeros((32, 32, 3), np.uint8), 0, np.stack([x0, x1, x2]).astype(np.float32),
                          goal))
    return out


def test_goal_input_learns_subgoals_set_by_a_goal_the_images_do_not_show():
    """With ``goal_input`` the model places x^1 / x^2 from the goal (held-out worst keypoint < 6 px at 128 px;
    measured 4.2); without it, it can only learn their average (measured 33.9 px). Both with ``coord_skip``: x^1 = goal +
    offset means a residual of goal - x^0, linear in both."""
    rng = np.random.default_rng(0)
    train_s, test_s = _goal_scenes(rng, 32), _goal_scenes(rng, 8)
    errors = {use: _later_subgoal_error(train_s, test_s, coord_skip=True, goal_input=use) for use in (True, False)}
    assert errors[True] < 6.0 and errors[False] > 4 * errors[True], errors


def test_linear_init_starts_the_plan_at_the_least_squares_fit():
    """On toy scenes whose later subgoals are affine in x^0 and the goal, the UNTRAINED model whose linear maps
    ``least_squares_init`` set already plans them from the true x^0 (< 0.5 px; the transformer's residual head
    starts at zero); before the init it is far off. ``linear_init`` without ``coord_skip`` is refused."""
    from relam.models.train_anticipation import batch_goals, least_squares_init
    rng = np.random.default_rng(0)
    train_s, test_s = _goal_scenes(rng, 32), _goal_scenes(rng, 8)
    m = _model(coord_skip=True, goal_input=True).eval()
    with torch.no_grad():
        m.head_stop.bias.fill_(-10.0)     # never stop: plans of the scenes' length
    m.set_goal_statistics(batch_goals(train_s, m))
    feats = Features(m, np.zeros((1, 32, 32, 3), np.uint8), None)

    def error_px():
        plans = m.generate(feats(test_s), max_len=3, x0=torch.from_numpy(np.stack([s.subgoals[0] for s in test_s])),
                           goal=batch_goals(test_s, m))
        return np.mean([np.abs(p[1:] - s.subgoals[1:]).max() for p, s in zip(plans, test_s)]) * 128

    before = error_px()
    residuals = least_squares_init(m, train_s)
    assert len(residuals) == 2 and max(residuals) * 128 < 0.1
    assert error_px() < 0.5 < 10 < before
    with pytest.raises(ValueError, match="coord_skip"):
        AnticipationConfig(linear_init=True)


def test_goal_input_generate_matches_teacher_forcing_and_needs_the_goal():
    m = _model(goal_input=True, coord_skip=True).eval()
    with torch.no_grad():     # a different map per step, so a step mix-up between the two passes shows
        m.goal_weight.normal_(0, 0.1)
        m.goal_bias.normal_(0, 0.05)
        m.head_res.weight.normal_(0, 0.1)
        m.head_stop.bias.fill_(-10.0)
    m.set_goal_statistics(torch.rand(10, 3))
    feats = m.encode_images(_images(2), _images(2, 1))
    goal = torch.rand(2, 3)
    plans = m.generate(feats, max_len=5, goal=goal)
    pred, _ = m(feats, torch.from_numpy(np.stack(plans)), goal)
    np.testing.assert_allclose(pred.detach().numpy(), np.stack(plans), atol=1e-5)
    other = m.generate(feats, max_len=5, goal=goal + 0.3)
    np.testing.assert_allclose(other[0][0], plans[0][0], atol=1e-6)       # x^0 reads the images, here no goal path
    assert np.abs(other[0][1:] - plans[0][1:]).max() > 1e-3                # later subgoals follow the goal
    with pytest.raises(ValueError, match="goal_input"):
        m.generate(feats, max_len=5)
    with pytest.raises(ValueError, match="without goal"):
        _model().generate(feats, max_len=5, goal=goal)


def test_goals_from_simulator_reads_meta_world_goals_per_demo_seed(task_cache):
    """A multi-task goal-reading model needs a goal for every task's demos: Meta-World's come from its target
    position, per demo seed, as the planner's SimGoal reads them; datasets that have goals keep them."""
    from types import SimpleNamespace

    from relam.models.train_anticipation import goals_from_simulator
    from relam.rl.planners import goal_features

    kept = np.ones((2, 3), np.float32)
    data = {"drawer-open": SimpleNamespace(goals=None, seeds=np.array([3, 4])),
            "button-press-wall": SimpleNamespace(goals=kept, seeds=np.array([3, 4]))}
    goals_from_simulator(data, 128)
    got = data["drawer-open"].goals
    assert got.shape == (2, 3) and got.dtype == np.float32 and data["button-press-wall"].goals is kept
    task = task_cache("drawer-open")
    for row, seed in zip(got, (3, 4)):
        task.reset(seed)
        np.testing.assert_allclose(row, goal_features(task.camera(), task.goal_position()), atol=1e-6)
    assert np.abs(got[0] - got[1]).max() > 1e-3


def test_shift_augment_moves_the_goal_pixel_with_the_frame_but_not_its_depth():
    from relam.models.train_anticipation import shift_samples
    s = Sample("toy", np.zeros((32, 32, 3), np.uint8), 0, np.full((2, 4, 2), 0.5, np.float32),
               np.array([0.5, 0.5, 0.7], np.float32))
    out = shift_samples([s], 4, np.random.default_rng(3), 32)[0]
    move = out.subgoals[0, 0] - 0.5
    assert np.abs(move).max() > 0
    np.testing.assert_allclose(out.goal, [0.5 + move[0], 0.5 + move[1], 0.7], atol=1e-6)


def test_goal_features_are_the_goal_pixel_normalised_and_its_depth():
    from relam.envs.camera import CameraParams
    from relam.rl.planners import goal_features
    cam = CameraParams(intrinsic=np.array([[100.0, 0, 64], [0, 100.0, 64], [0, 0, 1]]),
                       extrinsic=np.c_[np.eye(3), [0, 0, 1.0]], width=128, height=128)
    g = goal_features(cam, [0.1, -0.2, 1.0])     # camera z = 2 -> pixel (64 + 5, 64 - 10)
    np.testing.assert_allclose(g, [69 / 128, 54 / 128, 2.0], atol=1e-6)


def test_plan_errors_penalise_wrong_lengths():
    t = np.zeros((3, 2, 2))
    assert plan_errors([t], [t], 100)["subgoal_px"] == 0
    longer = np.concatenate([t, np.ones((1, 2, 2))])
    e = plan_errors([longer], [t], 100)
    assert e["len_err"] == 1 and e["subgoal_px"] > 0 and e["x0_px"] == 0


def test_plan_errors_report_the_first_subgoal_mean_and_worst_keypoint():
    t = np.zeros((3, 2, 2))
    p = t.copy()
    p[1, 0] = [0.03, 0.04]          # one keypoint of x^1 off by 5 px at 100 px, the other exact
    p[2] = 0.5                      # later subgoals do not enter x1
    e = plan_errors([p], [t], 100)
    assert np.isclose(e["x1_px"], 2.5) and np.isclose(e["x1_max_px"], 5.0) and e["x0_px"] == 0
    p[0, 1] = [0.06, 0.08]          # x^0's second keypoint 10 px off in one plan of two
    e = plan_errors([p, t], [t, t], 100)
    assert np.allclose(e["x0_px_per_keypoint"], [0.0, 5.0]) and np.isclose(e["x0_px"], 2.5)
    # a one-step plan is padded by repeating its x^0, like subgoal_px
    e = plan_errors([t[:1]], [t], 100)
    assert e["x1_px"] == 0 and e["len_err"] == 2


def _write_subgoal_ds(tmp_path, k=4):
    samples = _tiny_dataset(4)
    return SubgoalDataset(task="toy", first_frames=np.stack([s.first_frame for s in samples]),
                          task_frame=np.zeros((32, 32, 3), np.uint8),
                          subgoals=[s.subgoals[:, :k] if k <= 4 else np.tile(s.subgoals, (1, 2, 1)) for s in samples],
                          keyframes=[np.arange(len(s.subgoals)) for s in samples], tracks=[], seeds=np.arange(4),
                          prompts=["a", "b"], num_keypoints=k)


def test_training_run_checkpoints_resume_and_reload(tmp_path):
    cfg = AnticipationConfig(model=AnticipationModelConfig(**TINY), batch_size=2, train_steps=6, eval_every=3,
                             checkpoint_every=3, warmup_steps=1)
    ds = {"toy": _write_subgoal_ds(tmp_path)}
    run = tmp_path / "run"
    cfg.train_steps = 3
    train(run, ds, cfg, 32, progress=False)
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3
    cfg.train_steps = 6  # a longer run resumes... only with the same config: a changed one starts over
    metrics = train(run, ds, cfg, 32, progress=False)
    rows = (run / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,loss") and len(rows) == 7  # restarted cleanly: 6 steps logged once
    assert metrics["val"]["x0_px"] >= 0 and json.loads((run / "config.json").read_text())["train_steps"] == 6
    # interrupted mid-run: delete metrics, roll the checkpoint back to step 3 of the SAME config -> resumes at 3
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    model, _ = load_model(run / "checkpoint.pt")
    feats = model.encode_images(torch.from_numpy(ds["toy"].first_frames[:1]),
                                torch.from_numpy(ds["toy"].task_frame[None]))
    reloaded_plan = model.generate(feats)[0]
    m2 = AnticipationModel(AnticipationModelConfig(**TINY))
    m2.load_state_dict(state["model"])
    np.testing.assert_allclose(m2.generate(feats)[0], reloaded_plan)
    state["step"] = 3
    torch.save(state, run / "checkpoint.pt")
    (run / "metrics.json").unlink()
    train(run, ds, cfg, 32, progress=False)
    assert len((run / "log.csv").read_text().strip().splitlines()) == 10  # 6 + 3 resumed steps
    assert train(run, ds, cfg, 32, progress=False)["skipped"]


def test_x0_error_by_keypoint_agrees_with_the_run_metrics_and_the_mean_baseline(tmp_path):
    from relam.models.train_anticipation import heldout_plans, mean_x0_baseline, x0_error_by_keypoint
    # 2 of the 4 demos held out; the default val_fraction (0.1) would hold out 1, so a helper that split by
    # anything but the checkpoint's settings fails here
    cfg = AnticipationConfig(model=AnticipationModelConfig(**TINY), batch_size=2, train_steps=4, eval_every=4,
                             checkpoint_every=4, warmup_steps=1, val_fraction=0.5, x0_warmup_steps=2)
    ds = {"toy": _write_subgoal_ds(tmp_path)}
    metrics = train(tmp_path / "run", ds, cfg, 32, progress=False)
    row = x0_error_by_keypoint(tmp_path / "run", ds, 32)["toy"]
    val, plans = heldout_plans(tmp_path / "run", ds)
    assert len(val) == len(plans) == 2
    assert len(row["train"]) == len(row["val mean"]) == 4 and len(row) == 4
    assert np.mean(row["val"]) == pytest.approx(metrics["val"]["x0_px"], rel=1e-5)
    assert np.mean(row["val mean"]) == pytest.approx(mean_x0_baseline(ds, cfg, 32)["toy"], rel=1e-5)


def test_options_at_their_off_value_leave_config_json_as_before_they_existed(tmp_path):
    """A finished model (and the RL runs fingerprinting its config.json) must not go stale because an option
    was added; switching the option on must retrain."""
    from relam.models.train_anticipation import OPTIONS_ADDED_OFF
    cfg = AnticipationConfig(model=AnticipationModelConfig(**{**TINY, "cnn_points": 0}), batch_size=2, train_steps=2,
                             eval_every=2, checkpoint_every=2, warmup_steps=1)
    ds = {"toy": _write_subgoal_ds(tmp_path)}
    run = tmp_path / "run"
    train(run, ds, cfg, 32, progress=False)
    saved = json.loads((run / "config.json").read_text())
    for path in OPTIONS_ADDED_OFF:
        node = saved
        for key in path[:-1]:
            node = node[key]
        assert path[-1] not in node, path
    assert train(run, ds, cfg, 32, progress=False)["skipped"]
    cfg.model.readout = True
    assert "skipped" not in train(run, ds, cfg, 32, progress=False)
    assert json.loads((run / "config.json").read_text())["model"]["readout"] is True


def test_switching_the_multitask_run_on_does_not_retrain_a_per_task_model(tmp_path):
    """``per_task`` / ``multitask`` choose which runs a profile trains; a finished model is the same model either
    way, and its config.json (the fingerprint its RL runs hold) keeps its bytes. Other changes still retrain."""
    cfg = AnticipationConfig(model=AnticipationModelConfig(**TINY), batch_size=2, train_steps=2, eval_every=2,
                             checkpoint_every=2, warmup_steps=1, multitask=False)
    ds = {"toy": _write_subgoal_ds(tmp_path)}
    run = tmp_path / "run"
    train(run, ds, cfg, 32, progress=False)
    before = (run / "config.json").read_bytes()
    cfg.multitask, cfg.per_task = True, False
    assert train(run, ds, cfg, 32, progress=False)["skipped"]
    assert (run / "config.json").read_bytes() == before
    cfg.lr = 5e-4
    assert "skipped" not in train(run, ds, cfg, 32, progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["lr"] == 5e-4 and saved["multitask"] is True


def test_an_interrupted_retrain_is_not_skipped_with_the_old_metrics(tmp_path, monkeypatch):
    import relam.models.train_anticipation as ta
    cfg = AnticipationConfig(model=AnticipationModelConfig(**TINY), batch_size=2, train_steps=2, eval_every=2,
                             checkpoint_every=2, warmup_steps=1)
    ds = {"toy": _write_subgoal_ds(tmp_path)}
    run = tmp_path / "run"
    train(run, ds, cfg, 32, progress=False)
    cfg.lr = 5e-4                                        # a new configuration retrains ...

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(ta, "loss_fn", interrupted)
    with pytest.raises(KeyboardInterrupt):               # ... and is interrupted before its first step
        train(run, ds, cfg, 32, progress=False)
    monkeypatch.undo()
    assert not (run / "metrics.json").exists()
    metrics = train(run, ds, cfg, 32, progress=False)
    assert "skipped" not in metrics and json.loads((run / "config.json").read_text())["lr"] == 5e-4


def test_k_mismatch_is_a_clear_error(tmp_path):
    cfg = AnticipationConfig(model=AnticipationModelConfig(**TINY), train_steps=1)
    with pytest.raises(ValueError, match=r"built for K=4 keypoints but the data has K=8.*num_keypoints"):
        train(tmp_path / "run", {"toy": _write_subgoal_ds(tmp_path, k=8)}, cfg, 32, progress=False)


def test_dinov2_path_with_tiny_random_config(tmp_path):
    from transformers import Dinov2Config, Dinov2Model
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=14, image_size=56)
    Dinov2Model(cfg).save_pretrained(tmp_path / "dino")
    enc = DINOv2Encoder(str(tmp_path / "dino"), image_size=56, pool=2)
    assert not any(p.requires_grad for p in enc.parameters())
    m = AnticipationModel(AnticipationModelConfig(**{**TINY, "encoder": "dinov2", "dinov2_model": str(tmp_path / "dino"),
                                                       "dinov2_image_size": 56}))
    assert m.tokens_per_image == 4  # (56 / 14 / 2)^2
    imgs = _images(3)
    cache = FeatureCache(tmp_path / "feats.npz", m.encoder)
    f1 = cache.encode(imgs.numpy())
    assert f1.shape == (3, 4, 32) and cache.computed == 3
    cache.encode(imgs.numpy())
    assert cache.computed == 3, "features are computed once per distinct image"
    cache.save()
    again = FeatureCache(tmp_path / "feats.npz", m.encoder)
    torch.testing.assert_close(again.encode(imgs.numpy()), f1)
    assert again.computed == 0
    pred, _ = m(torch.stack([f1, f1], 1), torch.rand(3, 4, 4, 2))
    assert pred.shape == (3, 4, 4, 2)


def test_missing_dinov2_weights_name_the_fix_and_fallback(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EncoderUnavailableError, match=r"huggingface-cli download.*encoder='cnn'"):
        DINOv2Encoder(str(tmp_path / "nowhere"))


def test_cnn_coordinates_tell_positions_inside_a_pooled_cell_apart(tmp_path):
    """With CoordConv inputs the pooled token of a cell depends on WHERE in the cell an object sits; checkpoints
    written before the option existed (no ``cnn_coords`` key) still load, as the plain CNN they were."""
    from relam.models.encoders import CNNEncoder
    from relam.models.train_anticipation import save_checkpoint

    blank = torch.zeros(1, 128, 128, 3, dtype=torch.uint8)
    a, b = blank.clone(), blank.clone()
    a[0, 24:28, 24:28] = 255
    b[0, 32:36, 32:36] = 255        # 8 px (the CNN's stride) further, inside the same 64 x 64 cell, off the borders
    for coords in (False, True):
        torch.manual_seed(0)
        enc = CNNEncoder(channels=8, grid=2, coords=coords, points=0)
        assert enc.stem[0].in_channels == 3 + 2 * coords
        spot = (enc(a) - enc(blank))[0, 0].norm()
        moved = (enc(a) - enc(b))[0, 0].norm() / spot     # how much the token changes when the spot moves
        assert (moved > 0.02) if coords else (moved < 0.005)   # a plain CNN + average pool barely sees the move
    old = AnticipationModelConfig(**{**TINY, "cnn_coords": False, "cnn_points": 0})
    acfg = AnticipationConfig(model=old)
    save_checkpoint(tmp_path / "old.pt", AnticipationModel(old), None, 0, acfg)
    ckpt = torch.load(tmp_path / "old.pt", weights_only=False)
    del ckpt["config"]["model"]["cnn_coords"], ckpt["config"]["model"]["cnn_points"]
    torch.save(ckpt, tmp_path / "old.pt")
    model, _ = load_model(tmp_path / "old.pt")
    assert model.encoder.stem[0].in_channels == 3 and model.encoder.points == 0


def test_cnn_point_tokens_are_the_soft_argmax_of_their_heat_maps():
    from relam.models.encoders import CNNEncoder

    enc = CNNEncoder(channels=8, grid=2, points=2)
    fmap = torch.zeros(1, 64, 32, 32)
    with torch.no_grad():
        enc.heat.weight.zero_(), enc.heat.bias.zero_()
        enc.heat.weight[0, 0] = enc.heat.weight[1, 1] = 50.0     # map 0 follows channel 0, map 1 channel 1
        enc.log_temperature.zero_()
    fmap[0, 0, 8, 24] = 1.0                                    # row 8, column 24
    fmap[0, 1, 31, 0] = 1.0
    xy = enc.soft_argmax(fmap)[0]
    lin = torch.linspace(-1, 1, 32)
    torch.testing.assert_close(xy[0], torch.stack([lin[24], lin[8]]), atol=1e-3, rtol=0)
    torch.testing.assert_close(xy[1], torch.stack([lin[0], lin[31]]), atol=1e-3, rtol=0)
    assert enc(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)).shape == (2, 4 + 2, 8)


def test_shift_augmentation_moves_the_scene_and_its_plan_together():
    from relam.models.train_anticipation import shift_samples

    sample = _tiny_dataset(n=1)[0]
    ys, xs = np.nonzero(sample.first_frame[..., 0])
    rng = np.random.default_rng(3)
    for _ in range(5):
        state = rng.bit_generator.state
        (moved,) = shift_samples([sample], 4, rng, image_size=32)
        rng2 = np.random.default_rng()
        rng2.bit_generator.state = state
        dx, dy = rng2.integers(-4, 5, 2)
        ys2, xs2 = np.nonzero(moved.first_frame[..., 0])
        assert (xs2.min() - xs.min(), ys2.min() - ys.min()) == (dx, dy)
        np.testing.assert_allclose(moved.subgoals - sample.subgoals, np.broadcast_to([dx / 32, dy / 32],
                                                                                      sample.subgoals.shape), atol=1e-6)
        assert moved.first_frame.shape == sample.first_frame.shape and moved.task_index == sample.task_index


def test_a_rebuilt_subgoal_dataset_retrains_the_model(tmp_path):
    """The run records the settings of the data it was trained on (keypoint selection, keyframes...), so a
    subgoal dataset rebuilt under other settings is not silently planned for by the old model."""
    cfg = AnticipationConfig(model=AnticipationModelConfig(**TINY), batch_size=2, train_steps=2, eval_every=2,
                             checkpoint_every=2, warmup_steps=1)
    ds = _write_subgoal_ds(tmp_path)
    ds.settings = {"keypoints": {"selection": "fps"}}
    run = tmp_path / "run"
    train(run, {"toy": ds}, cfg, 32, progress=False)
    assert train(run, {"toy": ds}, cfg, 32, progress=False)["skipped"]
    ds.settings = {"keypoints": {"selection": "near-object"}}
    assert "skipped" not in train(run, {"toy": ds}, cfg, 32, progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["toy"]["keypoints"]["selection"] == "near-object"
    assert torch.load(run / "checkpoint.pt", weights_only=False)["data"] == saved["data"]


def test_mean_x0_baseline_is_the_error_of_the_training_mean(tmp_path):
    from relam.models.train_anticipation import load_samples, mean_x0_baseline

    ds = {"toy": _write_subgoal_ds(tmp_path)}
    cfg = AnticipationConfig(val_fraction=0.34)
    train_s, val_s, _, _ = load_samples(ds, cfg.val_fraction, cfg.seed)
    mean = np.mean([s.subgoals[0] for s in train_s], 0)
    expect = np.mean([np.linalg.norm(s.subgoals[0] - mean, axis=-1).mean() for s in val_s]) * 32
    assert mean_x0_baseline(ds, cfg, 32)["toy"] == pytest.approx(expect) and expect > 0


def test_multitask_overrides_apply_to_the_multitask_model_only():
    from relam.config import ConfigError, load_config
    cfg = load_config("smoke", {"anticipation": {"train_steps": 3, "multitask_overrides": {
        "train_steps": 7, "model": {"readout": True}}}})
    ac = cfg.anticipation
    multi, push = ac.for_task(None), ac.for_task("PushCube")
    assert (multi.train_steps, multi.model.readout) == (7, True)
    assert (push.train_steps, push.model.readout) == (3, False)
    assert multi.multitask_overrides == push.multitask_overrides == {}    # a run's config.json holds what it used
    assert ac.train_steps == 3 and ac.model.readout is False
    # a run trained before the option keeps its config.json text (the empty mapping is left out)
    assert "multitask_overrides" not in run_config_json(push, {})
    with pytest.raises(ConfigError, match=r"anticipation\.multitask_overrides\.train_step"):
        load_config("smoke", {"anticipation": {"multitask_overrides": {"train_step": 7}}})
    with pytest.raises(ValueError, match="not task_overrides"):
        load_config("smoke", {"anticipation": {"multitask_overrides": {"task_overrides": {}}}})


def test_task_overrides_apply_to_that_tasks_own_model_only(tmp_path):
    from relam.config import ConfigError, load_config
    # a mapping replaces the profile's whole task_overrides, so smoke's door-open K = 8 goes on both sides
    cfg = load_config("smoke", {"perception": {"task_overrides": {}}, "anticipation": {"task_overrides": {
        "PickCube": {"lr": 1e-3, "shift_augment": 4, "model": {"readout": True}}}}})
    ac = cfg.anticipation
    pick, push, multi = ac.for_task("PickCube"), ac.for_task("PushCube"), ac.for_task(None)
    assert (pick.lr, pick.shift_augment, pick.model.readout) == (1e-3, 4, True)
    assert (push.lr, push.shift_augment, push.model.readout) == (ac.lr, ac.shift_augment, False) == (multi.lr, 0, False)
    assert ac.model.readout is False and ac.lr != 1e-3            # the profile's section itself is untouched
    assert pick.task_overrides == push.task_overrides == multi.task_overrides == {}
    with pytest.raises(ConfigError, match=r"anticipation\.lrr"):
        load_config("smoke", {"anticipation": {"task_overrides": {"PickCube": {"lrr": 1e-3}}}})
    with pytest.raises(ValueError, match=r"unknown task 'PickCub'.*PickCube"):
        load_config("smoke", {"anticipation": {"task_overrides": {"PickCub": {"lr": 1e-3}}}})
    # a model trained without overrides stays current when another task gets some; its own override retrains
    base = AnticipationConfig(model=AnticipationModelConfig(**TINY), batch_size=2, train_steps=2, eval_every=2,
                              checkpoint_every=2, warmup_steps=1)
    ds = {"toy": _write_subgoal_ds(tmp_path)}
    train(tmp_path / "run", ds, base, 32, progress=False)
    base.task_overrides = {"PickCube": {"lr": 5e-4}}
    assert train(tmp_path / "run", ds, base.for_task("PushCube"), 32, progress=False)["skipped"]
    assert "task_overrides" not in json.loads((tmp_path / "run" / "config.json").read_text())
    assert "skipped" not in train(tmp_path / "run", ds, base.for_task("PickCube"), 32, progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["lr"] == 5e-4


def test_int8_planning_copy_quantises_only_the_blocks_and_plans_as_fp32_does(tmp_path):
    from relam.models.anticipation import int8_for_cpu
    from relam.rl.planners import ModelPlanner
    m = _model(d_model=64, n_layers=3, n_heads=4)
    with torch.no_grad():   # non-trivial heads, so the plan depends on every block's output
        for head in (m.head_abs, m.head_res):
            head.weight.normal_(0, 0.05)
        m.head_stop.bias.fill_(-1e4)
    q = int8_for_cpu(m)
    quantised = [type(mod).__module__ for mod in q.blocks.modules() if "Linear" in type(mod).__name__]
    assert quantised and all("quantized" in name for name in quantised)
    assert type(m.blocks[0].qkv) is torch.nn.Linear and type(q.head_abs) is torch.nn.Linear   # original untouched
    feats = m.encode_images(_images(2), _images(2, 1))
    a, b = m.generate(feats, max_len=5), q.generate(feats, max_len=5)
    assert [len(p) for p in a] == [len(p) for p in b] == [5, 5]
    assert 0 < max(np.abs(x - y).max() for x, y in zip(a, b)) < 0.05
    with torch.no_grad():   # each block's update to its input: int8 changes it by a few per cent
        x = m.image_tokens(feats)
        for fb, qb in zip(m.blocks, q.blocks):
            (yf, _), (yq, _) = fb(x), qb(x)
            assert 0 < (yq - yf).norm() / (yf - x).norm() < 0.05
            x = yf
    # the planner option, on a trained checkpoint
    cfg = AnticipationConfig(model=AnticipationModelConfig(**TINY), batch_size=2, train_steps=3, eval_every=3,
                             warmup_steps=1)
    ds = _write_subgoal_ds(tmp_path)
    train(tmp_path / "run", {"toy": ds}, cfg, 32, progress=False)
    plans = [ModelPlanner(tmp_path / "run" / "checkpoint.pt", "toy", quantize=qz)(ds.first_frames[0])
             for qz in (False, True)]
    assert plans[0].shape == plans[1].shape and np.abs(plans[0] - plans[1]).max() < 0.02
