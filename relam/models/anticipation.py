"""The anticipation model (paper §3.1.2, App. C; SPEC §4): first frame -> keypoint subgoals x^0 ... x^M.

Sequence [image tokens of I_0 and of the task-indication frame ; start ; z^0 ; ... ; z^{M-1}] through
pre-norm transformer blocks. Image tokens attend only to image tokens (so they never depend on keypoints and
can be computed once per episode); keyframe tokens attend to every image token and causally to keyframe
tokens. The output at ``start`` gives x^0 (absolute); the output at z^j gives x^{j+1} = x^j + delta (residual,
paper) and a stop logit saying whether x^{j+1} is the last subgoal (ours). Coordinates are normalised by
the image size. ``generate`` runs autoregressively with a key/value cache: one token per step.

Ours, not in the paper: a linear read-out of the first frame's features is added to every keyframe token
(``readout``), a direct path from "where things are" to the coordinate heads; a linear map from each subgoal to the
next (``coord_skip``); and the task's goal as an input beside the images (``goal_input``); see the config's
docstrings.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from relam.models.encoders import make_encoder


@dataclass
class AnticipationModelConfig:
    num_keypoints: int = 4
    """K (paper: 4)."""
    d_model: int = 512
    """Transformer width (paper: 512)."""
    n_layers: int = 12
    """Transformer blocks (paper: 12)."""
    n_heads: int = 8
    """Attention heads (paper: 8)."""
    dropout: float = 0.1
    """Dropout (paper: 0.1)."""
    max_subgoals: int = 24
    """Longest plan (x^0 ... x^{max-1}) the position table covers; also generate()'s default limit."""
    encoder: str = "cnn"
    """'dinov2' (paper; frozen, needs weights) or 'cnn' (trained with the model; offline fallback)."""
    dinov2_model: str = ""
    """Local directory or hub id of DINOv2 weights; empty: $RELAM_DINOV2_MODEL, else facebook/dinov2-small."""
    dinov2_image_size: int = 224
    """DINOv2 input size (paper: 224 -> 16 x 16 patches of 14 px)."""
    dinov2_pool: int = 2
    """Average-pool DINOv2's patch grid by this factor (2: 8 x 8 tokens per image)."""
    cnn_channels: int = 128
    """Width of the CNN encoder's patch tokens."""
    cnn_grid: int = 4
    """The CNN encoder gives grid x grid tokens per image."""
    cnn_coords: bool = False
    """Give the CNN encoder each pixel's (x, y) as two extra input channels (CoordConv; ours, see CNNEncoder)."""
    cnn_points: int = 0
    """Extra CNN tokens, one per learned heat map, holding its soft-argmax (x, y) (ours, see CNNEncoder; 0: off)."""
    readout: bool = False
    """Add a linear read-out of ALL first-frame encoder features to every keyframe token (ours). Measured on
    PushCube (45 training demos, d 256, 4 layers, CoordConv + 16 point tokens, x^0-only loss, lr 1e-3, 450
    steps): without it the cube keypoint's x^0 error on the training demos stayed at 12.7 px, the error of the
    training mean (12.0): attention alone did not route the cube's position to the x^0 head; with it, 1.8 px
    (1.3 px held out). Costs P*C*d parameters (CNN: 32 x 128 x 256 = 1M)."""
    coord_skip: bool = False
    """Add a linear map of the previous subgoal to each residual, one map per plan step: x^{j+1} = x^j +
    head_res(h_j) + A_j (x^j - 0.5) + b_j, with A_j, b_j learned and zero at the start (ours). Why: on PickCube
    the grasp subgoal x^1 is almost a linear function of x^0 (the gripper goes to where the cube is; least
    squares on the expert's plans predicts it to 2.4 px, leave-one-out), but the transformer left the gripper's
    keypoints of x^1 10 px off on its training demos and 15 px off on the offline data, even when fed the true
    x^0, so the stage machine stayed on the first subgoal of most successful trajectories. The transformer
    still adds what the coordinates alone cannot say (where the goal is). Costs L*2K*(2K+1) parameters.
    Alone (ablation ``pick-skip``, 3 seeds, 40k; now on for PickCube with ``goal_input`` and ``linear_init``) it
    brought x^1's gripper keypoints from 15 to 7 px on offline trajectories and the successful ones stuck at the
    first subgoal from 64 to 8 %, but offline success moved within the noise (100 states: ``relam`` 55.7 -> 59.7 %,
    ``env-reward`` 64.3 -> 62.0; README stage 06)."""
    goal_input: bool = False
    """Condition the plan on the task's goal: GOAL_DIM numbers per episode (the goal's pixel (u, v), normalised like
    the keypoints, and its camera depth in metres; ``relam.rl.planners.SimGoal`` reads them from the simulator),
    embedded and added to every keyframe token, and, per plan step, a linear map C_j g + c_j of the standardised
    goal added to each residual, zero at the start (ours; a deviation from the paper, whose model sees only the
    first frame and the task-indication frame). Why: PickCube's goal is a random point in the air, drawn in the
    first frame only as a small green sphere (a few pixels at 128 px, and only its 2-D position), while the policy
    observes ``goal_pos`` as ManiSkill's observation gives it; from x^0 alone least squares predicts the expert's
    x^2 / x^3 to ~21 px, from x^0 and the goal to 2.3-2.7 px (README stage 06). Meta-World's goal is its task's
    target (``MetaWorldTask.goal_position``), so a multi-task model over both simulators can read goals too.
    On for PickCube in ``cpu`` / ``smoke`` with ``coord_skip`` and ``AnticipationConfig.linear_init`` (which made
    the difference: ``relam`` 55.7 -> 76.3 % over 100 states, README stage 06). Without the init (ablation
    ``pick-goal``, 4 000 steps, 1 497 s; 3 seeds, 40k, final models): held-out x^0 / plan 4.4 / 4.6 px (profile 4.7
    / 6.1); plans against the expert's on 37 offline trajectories, robot keypoints of x^2 / x^3 ~4.3 / ~3.9 px
    (profile ~11.8 / ~11.5); offline data with the last subgoal reached 69.5 % (profile 8 %, ground truth 72 %); but
    success over 100 states moved only within the noise (``relam`` 55.7 -> 57.0 %, ``env-reward`` 64.3 -> 66.3),
    with the last subgoal reached 2-14 points more often than success in the ``relam`` runs (50 states each)."""


GOAL_DIM = 3  # goal_input: (u, v) normalised pixel + camera depth (m)


def check_num_keypoints(model_k: int, data_k: int) -> None:
    if data_k != model_k:
        raise ValueError(f"the model is built for K={model_k} keypoints but the data has K={data_k}; rebuild the "
                         f"subgoal dataset with perception.keypoints.num_keypoints={model_k} or set "
                         f"anticipation.model.num_keypoints={data_k}")


def per_step_linear(inputs: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, first_step: int):
    """W_j u_j + b_j with plan step j's own map: ``inputs`` (B, L, n) for steps ``first_step`` ... (or (B, n) for
    that one step), ``weight`` (max_subgoals, m, n), ``bias`` (max_subgoals, m) -> (B, L, m) (or (B, m))."""
    one = inputs.dim() == 2
    u = inputs[:, None] if one else inputs
    steps = slice(first_step, first_step + u.shape[1])
    out = torch.einsum("bln,lmn->blm", u, weight[steps]) + bias[steps]
    return out[:, 0] if one else out


class Block(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.p = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mask=None, past=None):
        """x (B, N, d); past: (k, v) of earlier tokens (B, h, N', d/h); mask (N, N'+N) bool, True = attend."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if past is not None:
            k, v = torch.cat([past[0], k], 2), torch.cat([past[1], v], 2)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self.p if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, n, d)))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x, (k, v)


class AnticipationModel(nn.Module):
    def __init__(self, cfg: AnticipationModelConfig, encoder: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        d, k2 = cfg.d_model, 2 * cfg.num_keypoints
        self.encoder = encoder if encoder is not None else make_encoder(cfg.encoder, **cfg.__dict__)
        self.tokens_per_image = self._tokens_per_image()
        self.in_proj = nn.Linear(self.encoder.out_dim, d)
        self.image_pos = nn.Parameter(torch.randn(2, self.tokens_per_image, d) * 0.02)  # which image, which patch
        self.kp_mlp = nn.Sequential(nn.Linear(k2, d), nn.GELU(), nn.Linear(d, d))
        self.start = nn.Parameter(torch.randn(d) * 0.02)
        self.readout = (nn.Sequential(nn.LayerNorm(self.tokens_per_image * self.encoder.out_dim),
                                      nn.Linear(self.tokens_per_image * self.encoder.out_dim, d))
                        if cfg.readout else None)
        self.step_pos = nn.Parameter(torch.randn(cfg.max_subgoals, d) * 0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.n_heads, cfg.dropout) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(d)
        self.head_abs, self.head_res, self.head_stop = nn.Linear(d, k2), nn.Linear(d, k2), nn.Linear(d, 1)
        nn.init.zeros_(self.head_res.weight), nn.init.zeros_(self.head_res.bias)  # start from "stay put"
        if cfg.coord_skip:
            self.skip_weight = nn.Parameter(torch.zeros(cfg.max_subgoals, k2, k2))
            self.skip_bias = nn.Parameter(torch.zeros(cfg.max_subgoals, k2))
        if cfg.goal_input:
            self.goal_embed = nn.Linear(GOAL_DIM, d)
            self.goal_weight = nn.Parameter(torch.zeros(cfg.max_subgoals, k2, GOAL_DIM))
            self.goal_bias = nn.Parameter(torch.zeros(cfg.max_subgoals, k2))
            # standardisation of the goal, set from the training demos (``set_goal_statistics``), saved with the model
            self.register_buffer("goal_mean", torch.zeros(GOAL_DIM))
            self.register_buffer("goal_std", torch.ones(GOAL_DIM))
        nn.init.zeros_(self.head_abs.weight)
        with torch.no_grad():
            self.head_abs.bias.fill_(0.5)  # start from the image centre

    def _tokens_per_image(self) -> int:
        if hasattr(self.encoder, "grid"):                                    # CNN
            return self.encoder.grid ** 2 + self.encoder.points
        side = self.cfg.dinov2_image_size // self.encoder.model.config.patch_size // max(self.cfg.dinov2_pool, 1)
        return side ** 2

    # --- image side --------------------------------------------------------------------------------------
    def encode_images(self, first: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        """Raw encoder features of both images, (B, 2, P, C): first frames and task-indication frames (uint8)."""
        return torch.stack([self.encoder(first), self.encoder(task)], 1)

    def image_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(B, 2, P, C) encoder features -> (B, 2P, d) transformer tokens."""
        x = self.in_proj(features) + self.image_pos
        return x.flatten(1, 2)

    def first_frame_readout(self, features: torch.Tensor):
        """(B, 2, P, C) -> (B, 1, d) summary of the first frame added to every keyframe token, or 0 (off)."""
        return self.readout(features[:, 0].flatten(1))[:, None] if self.readout is not None else 0.0

    # --- the task's goal (goal_input) -----------------------------------------------------------------------
    @torch.no_grad()
    def set_goal_statistics(self, goals: torch.Tensor) -> None:
        """Standardise goals (N, GOAL_DIM) by these training goals' mean and spread (a spread below 1e-3, e.g.
        a goal fixed relative to the frame, counts as 1e-3)."""
        goals = torch.as_tensor(goals, dtype=torch.float32).reshape(-1, GOAL_DIM)
        self.goal_mean.copy_(goals.mean(0))
        self.goal_std.copy_(goals.std(0, unbiased=False).clamp_min(1e-3) if len(goals) > 1 else torch.ones(GOAL_DIM))

    def standardised_goal(self, goal, b: int):
        """The standardised goal (B, GOAL_DIM), or None; checks it is given exactly when the model reads it."""
        if not self.cfg.goal_input:
            if goal is not None:
                raise ValueError("this model was not trained with the task's goal (anticipation.model.goal_input "
                                 "false): call it without goal=")
            return None
        if goal is None:
            raise ValueError("this model reads the task's goal (anticipation.model.goal_input): pass goal=(B, "
                             f"{GOAL_DIM}) tensor, e.g. from relam.rl.planners.SimGoal")
        goal = torch.as_tensor(goal, dtype=torch.float32).reshape(-1, GOAL_DIM)
        if goal.shape[0] != b:
            raise ValueError(f"goal has {goal.shape[0]} rows for a batch of {b}")
        return (goal.to(self.goal_mean) - self.goal_mean) / self.goal_std

    def goal_token(self, goal):
        """(B, 1, d) embedding of the standardised goal added to every keyframe token, or 0 (off)."""
        return 0.0 if goal is None else self.goal_embed(goal)[:, None]

    def goal_skip(self, goal, first_step: int, n_steps: int | None):
        """``goal_input``'s term C_j g + c_j for plan steps ``first_step`` ... (B, n_steps, 2K), or (B, 2K) for
        one step (``n_steps`` None); 0 when the option is off."""
        if goal is None:
            return 0.0
        inputs = goal if n_steps is None else goal[:, None].expand(-1, n_steps, -1)
        return per_step_linear(inputs, self.goal_weight, self.goal_bias, first_step)

    # --- teacher-forced training pass ---------------------------------------------------------------------
    def forward(self, features: torch.Tensor, subgoals: torch.Tensor, goal: torch.Tensor | None = None):
        """features (B, 2, P, C); subgoals (B, L, K, 2) with x^0 ... (padded); goal (B, GOAL_DIM) for a
        ``goal_input`` model. Returns predictions of x^0 ... x^{L-1} (B, L, K, 2) and stop logits (B, L-1): entry
        j says whether x^{j+1} is the last subgoal."""
        b, length = subgoals.shape[:2]
        self.check_keypoints(subgoals.shape[2])
        goal = self.standardised_goal(goal, b)
        if length > self.cfg.max_subgoals:
            raise ValueError(f"plan of {length} subgoals exceeds max_subgoals={self.cfg.max_subgoals}")
        img = self.image_tokens(features)
        kp = self.kp_mlp(subgoals[:, :-1].flatten(2))                        # z^0 ... z^{L-2}
        steps = torch.cat([self.start.expand(b, 1, -1), kp], 1) + self.step_pos[:length]
        steps = steps + self.first_frame_readout(features) + self.goal_token(goal)
        x = torch.cat([img, steps], 1)
        n_img = img.shape[1]
        mask = self.attention_mask(n_img, length, x.device)
        for blk in self.blocks:
            x, _ = blk(x, mask)
        h = self.ln_f(x[:, n_img:])
        k2 = subgoals.shape[2] * 2
        x0 = self.head_abs(h[:, 0])
        deltas = (self.head_res(h[:, 1:]) + self.coordinate_skip(subgoals[:, :-1].flatten(2), 0)
                  + self.goal_skip(goal, 0, length - 1))
        pred = torch.cat([x0[:, None], subgoals[:, :-1].flatten(2) + deltas], 1).view(b, length, k2 // 2, 2)
        return pred, self.head_stop(h[:, 1:]).squeeze(-1)

    def coordinate_skip(self, previous: torch.Tensor, first_step: int):
        """``coord_skip``'s term A_j (x^j - 0.5) + b_j for previous subgoals x^j, (B, L, 2K) from plan step
        ``first_step`` on (or (B, 2K) for one step); 0 when the option is off."""
        if not self.cfg.coord_skip:
            return 0.0
        return per_step_linear(previous - 0.5, self.skip_weight, self.skip_bias, first_step)

    @staticmethod
    def attention_mask(n_img: int, n_steps: int, device=None) -> torch.Tensor:
        n = n_img + n_steps
        mask = torch.zeros(n, n, dtype=torch.bool, device=device)
        mask[:, :n_img] = True                                               # everyone sees the images
        mask[n_img:, n_img:] = torch.tril(torch.ones(n_steps, n_steps, dtype=torch.bool, device=device))
        return mask                                                          # images see only images

    def check_keypoints(self, k: int) -> None:
        check_num_keypoints(self.cfg.num_keypoints, k)

    # --- planning ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, features: torch.Tensor, max_len: int | None = None, stop_threshold: float = 0.5,
                 x0: torch.Tensor | None = None, goal: torch.Tensor | None = None):
        """Autoregressive plan per item of the batch: a list of arrays (M+1, K, 2), normalised coordinates.
        Stops when the stop logit says the last predicted subgoal is final, or at ``max_len`` subgoals.
        ``x0`` (B, K, 2): use these keypoints as x^0 instead of the model's (e.g. x^0 perceived on the first
        frame) and anticipate the later subgoals from them, exactly as teacher forcing trained the model to.
        ``goal`` (B, GOAL_DIM): the task's goal, for (and only for) a ``goal_input`` model."""
        max_len = min(max_len or self.cfg.max_subgoals, self.cfg.max_subgoals)
        was_training = self.training
        self.eval()
        b = features.shape[0]
        goal = self.standardised_goal(goal, b)
        x = self.image_tokens(features)
        cache = []
        for blk in self.blocks:                                                # image tokens: once per episode
            x, kv = blk(x)
            cache.append(kv)
        readout = self.first_frame_readout(features) + self.goal_token(goal)
        tok = (self.start + self.step_pos[0]).expand(b, 1, -1) + readout
        plans, lengths = [], torch.full((b,), max_len, dtype=torch.long)
        done = torch.zeros(b, dtype=torch.bool)
        current = None
        for j in range(max_len):
            h = tok
            for i, blk in enumerate(self.blocks):
                h, cache[i] = blk(h, past=cache[i])
            h = self.ln_f(h[:, 0])
            if j == 0:
                current = self.head_abs(h) if x0 is None else x0.reshape(b, -1).to(h)
            else:
                current = (current + self.head_res(h) + self.coordinate_skip(current, j - 1)
                           + self.goal_skip(goal, j - 1, None))
                stop = (torch.sigmoid(self.head_stop(h)).squeeze(-1) > stop_threshold) & ~done
                lengths[stop] = j + 1                                        # x^j is the last subgoal
                done |= stop
            plans.append(current.view(b, -1, 2))
            if done.all() or j + 1 == max_len:
                break
            tok = (self.kp_mlp(current) + self.step_pos[j + 1])[:, None] + readout
        self.train(was_training)
        stacked = torch.stack(plans, 1).cpu().numpy()                          # (B, steps, K, 2)
        return [stacked[n, :int(lengths[n])] for n in range(b)]


def int8_for_cpu(model: AnticipationModel) -> AnticipationModel:
    """A copy of ``model`` for planning on CPU, its transformer blocks' linear layers in int8 (PyTorch's dynamic
    quantisation: int8 weights with one scale per layer, activations quantised per call); the encoder, the point MLP
    and the heads stay fp32. Ours, for inference only. Why: each generated subgoal is one token through every block,
    which reads all of the blocks' weights: at the paper's size (12 layers, d = 512; ~38 M block weights, 150 MB in
    fp32) a CPU's cache does not hold them, so planning waits on memory, and int8 weights are a quarter of the bytes
    (``benchmarks/planning_latency.py``: the latency and the plans' difference from fp32). The API is deprecated in
    PyTorch (a DeprecationWarning, silenced here) but present in the pinned torch 2.13."""
    import copy
    import warnings
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as e:   # removed in a later torch: say what to do instead of failing deep inside
        raise RuntimeError(f"int8 planning needs torch.ao.quantization.quantize_dynamic, which torch "
                           f"{torch.__version__} lacks: plan in fp32 (quantize=False) or use torch==2.13.0") from e
    q = copy.deepcopy(model).cpu().eval()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*(deprecated|quantiz).*")
        q.blocks = quantize_dynamic(q.blocks, {nn.Linear}, dtype=torch.qint8)
    return q
