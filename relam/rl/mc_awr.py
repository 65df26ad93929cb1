"""Offline learner 'awr-mc' (ours, an option of ``relam.rl.iql``): advantage-weighted cloning with Monte-Carlo
returns instead of IQL's TD critic.

1. Every transition gets the discounted return of the rest of its OWN trajectory under the method's reward,
   G_t = r_t + gamma * G_{t+1} (0 after the trajectory's last transition, also at a timeout: no bootstrapping).
2. A value net V(s) is regressed on G by MSE (``value_steps`` minibatches), then frozen.
3. A deterministic policy (MLP, tanh output) is cloned by MSE with per-transition weights
   exp(beta * A / std(A)), A = G - V(s), clipped at ``max_weight`` (AWR, Peng et al. 2019, with the advantages of
   the data's own returns).

Why it exists (README, stage 06): on the 50 expert + 50 noisy trajectories IQL's TD critic gives the noisy
half's lucky random jumps high advantages, so IQL behaves like cloning everything. Monte-Carlo returns score a
transition by what its trajectory went on to do, which a random jump in a failing trajectory does not earn.
Dividing A by its std makes beta independent of the reward's scale (the success bonus is 10, the step rewards
are in [-1, 0]). Dropout in the policy's hidden layers (``dropout``, default 0.1 in ``IQLConfig.mc_dropout``)
because without it the deterministic policy overfits the ~5k transitions and falls apart late: PushCube ``cpu``,
validation states (task seeds 3 000 000+, 20 episodes), seeds 0 / 1, at 10k / 20k / 30k / 40k steps: ``relam``
80 / 75 / 95 / 45 and 90 / 70 / 70 / 55 % without, 90 / 75 / 90 / 85 and 90 / 100 / 95 / 100 % with it;
``relam-gt`` 60 / 60 / 70 / 15 and 85 / 65 / 30 / 80 % without, 60 / 65 / 60 / 65 and 80 / 55 / 60 / 75 % with it.
Gaussian noise on the observations (sigma 0.01) did not help (``relam`` 30 / 75 % at 40k).

Action chunks (``chunk`` > 1, ``iql.mc_chunk``; ours, after ACT, Zhao et al. 2023): the policy predicts the next
``chunk`` actions of the trajectory (the loss masks steps past its end) and acts by temporal ensembling: at each step
every chunk predicted in the last ``chunk`` steps proposes an action for now, averaged with weights
exp(-ENSEMBLE_DECAY * i), i = 0 the oldest. Acting is then stateful: ``reset()`` at each episode start.
Probes (PickCube ``relam-gt``, 20 evaluation states, success at 10k / 20k / 30k / 40k steps): chunks of 4 with
ensembling, seeds 0 / 1 / 2: 60 / 75 / 70 / 60, 45 / 65 / 70 / 70 and 40 / 60 / 65 / 65 %; without chunks seed 0 gave
15 / 50 / 60 / 70 and the final models of seeds 1 / 2 45 / 50 %. Chunks of 4 acting on the newest chunk's first
action only (no ensembling), seeds 0 / 1: 30 / 50 / 75 / 60 and 30 / 45 / 55 / 65 %: slower early, the same at
40k, so the multi-step target helps by itself and the ensembling speeds learning up.

The learner keeps what ``relam.rl.iql.train_run`` needs: ``fit(n_steps)``, ``predict(x)``, ``save(path)`` and
``load_state(path)``, with the optimiser, the weights and the random state in the checkpoint, so a resumed run
continues exactly where it stopped.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn


def mc_returns(rewards: np.ndarray, episode: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted return of the rest of each transition's trajectory. Rows of one trajectory must be contiguous
    and in time order (as ``relam.rl.relabel`` writes them)."""
    rewards, episode = np.asarray(rewards, np.float64), np.asarray(episode)
    if len(rewards) != len(episode):
        raise ValueError(f"{len(rewards)} rewards for {len(episode)} episode ids")
    starts = np.flatnonzero(np.r_[True, episode[1:] != episode[:-1]])
    if len(np.unique(episode)) != len(starts):
        raise ValueError("the transitions of each trajectory must be contiguous (sort the dataset by episode, t)")
    out = np.zeros_like(rewards)
    for i in range(len(rewards) - 1, -1, -1):
        last = i + 1 == len(rewards) or episode[i + 1] != episode[i]
        out[i] = rewards[i] + (0.0 if last else gamma * out[i + 1])
    return out.astype(np.float32)


ENSEMBLE_DECAY = 0.1
"""Temporal ensembling of action chunks: weight exp(-ENSEMBLE_DECAY * i) of the chunk predicted i steps before the
oldest one still in play (ACT weights older predictions more; 0.1 over 4 steps: 1 / 0.90 / 0.82 / 0.74)."""


class TemporalEnsemble:
    """Acting with action chunks: feed it the chunk (k, A) predicted at each step, get the action for this step."""

    def __init__(self, k: int, decay: float = ENSEMBLE_DECAY):
        self.k, self.decay = int(k), float(decay)
        self.reset()

    def reset(self) -> None:
        self.chunks: list[np.ndarray] = []   # oldest first

    def __call__(self, chunk: np.ndarray) -> np.ndarray:
        self.chunks = (self.chunks + [np.asarray(chunk)])[-self.k:]
        n = len(self.chunks)
        proposals = np.stack([c[n - 1 - j] for j, c in enumerate(self.chunks)])   # chunk j was predicted n-1-j ago
        w = np.exp(-self.decay * np.arange(n))
        return ((w[:, None] * proposals).sum(0) / w.sum()).astype(np.float32)


def chunk_targets(actions: np.ndarray, episode: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """For each transition the next ``k`` actions of its own trajectory (N, k, A) and a mask (N, k) that is 0 past
    the trajectory's end (those entries repeat the transition's own action and are not trained on). Rows of one
    trajectory must be contiguous and in time order."""
    actions, episode = np.asarray(actions, np.float32), np.asarray(episode)
    n = len(actions)
    idx = np.arange(n)[:, None] + np.arange(k)[None]
    inside = idx < n
    idx = np.minimum(idx, n - 1)
    inside &= episode[idx] == episode[:, None]
    idx = np.where(inside, idx, np.arange(n)[:, None])
    return actions[idx], inside.astype(np.float32)


def advantage_weights(adv: torch.Tensor, beta: float, max_weight: float) -> torch.Tensor:
    """exp(beta * A / std(A)), clipped at ``max_weight``; beta 0 gives uniform weights (plain cloning)."""
    std = adv.std().clamp_min(1e-8)
    return torch.exp(beta * adv / std).clamp(max=max_weight)


class _Net(nn.Module):
    """MLP over the keypoint vector; with ``image_size`` the leading 3*size*size entries are an image (channels
    first, ``relam.rl.iql.downscale``) that goes through the paper's 3-layer CNN, joined to the MLP's features."""

    def __init__(self, obs_dim: int, out_dim: int, hidden: list[int], image_size: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        self.n_img = 0 if image_size is None else 3 * image_size * image_size
        self.size = image_size
        layers, d = [], obs_dim - self.n_img
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            d = h
        self.mlp = nn.Sequential(*layers)
        if image_size is not None:
            from relam.rl.hrl import image_cnn
            self.cnn = image_cnn(3, image_size, image_size, d)
            d *= 2
        self.head = nn.Linear(d, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp(x[:, self.n_img:])
        if self.n_img:
            h = torch.cat([h, self.cnn(x[:, :self.n_img].reshape(-1, 3, self.size, self.size))], -1)
        return self.head(h)


class _EnsembleNet(nn.Module):
    """``members`` MLPs over the keypoint vector with the layout of ``_Net``'s, evaluated together (batched matrix
    products: on a CPU the small MLP's cost is mostly per-operation overhead, which the members share). Input (B, D)
    goes to every member, (E, B, D) gives each member its own rows; output (E, B, out)."""

    def __init__(self, obs_dim: int, out_dim: int, hidden: list[int], members: int, dropout: float = 0.0):
        super().__init__()
        self.members, self.p = int(members), float(dropout)
        sizes = [obs_dim] + list(hidden) + [out_dim]
        self.weight, self.bias = nn.ParameterList(), nn.ParameterList()
        for d_in, d_out in zip(sizes[:-1], sizes[1:]):
            layers = [nn.Linear(d_in, d_out) for _ in range(self.members)]   # each member starts as nn.Linear does
            self.weight.append(nn.Parameter(torch.stack([lin.weight.detach().T for lin in layers])))
            self.bias.append(nn.Parameter(torch.stack([lin.bias.detach()[None] for lin in layers])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.expand(self.members, *x.shape) if x.dim() == 2 else x
        for j, (w, b) in enumerate(zip(self.weight, self.bias)):
            h = torch.baddbmm(b, h, w)
            if j + 1 < len(self.weight):
                h = nn.functional.dropout(torch.relu(h), self.p, self.training)
        return h


class MCAWR:
    """Monte-Carlo advantage-weighted cloning on a fixed dataset (see the module docstring)."""

    def __init__(self, obs: np.ndarray, actions: np.ndarray, returns: np.ndarray, *, hidden=(256, 256),
                 learning_rate: float = 3e-4, batch_size: int = 64, beta: float = 1.0, max_weight: float = 100.0,
                 value_steps: int = 5000, value_batch_size: int = 256, image_size: int | None = None,
                 dropout: float = 0.0, seed: int = 0, chunk: int = 1, episode: np.ndarray | None = None,
                 members: int = 1, ema: float = 0.0):
        if int(chunk) != chunk or chunk < 1:
            raise ValueError(f"chunk={chunk!r}: the number of actions the policy predicts must be an integer >= 1")
        if chunk > 1 and (episode is None or len(episode) != len(obs)):
            raise ValueError("action chunks need the trajectory id of every transition (episode=)")
        if not (len(obs) == len(actions) == len(returns)) or len(obs) == 0:
            raise ValueError(f"awr-mc needs as many observations, actions and returns, > 0: got {len(obs)}, "
                             f"{len(actions)}, {len(returns)}")
        self.obs = torch.as_tensor(np.asarray(obs, np.float32))
        self.actions = torch.as_tensor(np.clip(np.asarray(actions, np.float32), -1.0, 1.0))
        self.returns = torch.as_tensor(np.asarray(returns, np.float32))
        self.settings = dict(hidden=list(hidden), learning_rate=learning_rate, batch_size=batch_size, beta=beta,
                             max_weight=max_weight, value_steps=value_steps, value_batch_size=value_batch_size,
                             image_size=image_size, dropout=dropout, seed=seed)
        if int(members) != members or members < 1:
            raise ValueError(f"members={members!r}: the number of policies in the ensemble must be an integer >= 1")
        if members > 1 and image_size is not None:
            raise ValueError("a policy ensemble (iql.mc_members > 1) is built for the keypoint observation only; "
                             "set iql.mc_members: 1 for pixel observations")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema={ema!r}: the decay of the policy's weight average must be in [0, 1) (0: off)")
        self.ema = float(ema)
        if self.ema:   # absent at 0: checkpoints made before the option keep their settings
            self.settings["ema"] = self.ema
        self.members = int(members)
        if self.members > 1:   # absent at 1: checkpoints made before the option keep their settings
            self.settings["members"] = self.members
        self.chunk = int(chunk)
        if self.chunk > 1:   # absent at 1: checkpoints made before the option keep their settings
            self.settings["chunk"] = self.chunk
            targets, mask = chunk_targets(self.actions.numpy(), episode, self.chunk)
            self.chunk_actions, self.chunk_mask = torch.as_tensor(targets), torch.as_tensor(mask)
        self.ensemble = TemporalEnsemble(self.chunk)
        self.gen = torch.Generator().manual_seed(seed)   # minibatches
        with torch.random.fork_rng(devices=[]):          # initial weights and dropout masks: a stream of our own
            torch.manual_seed(seed)
            dim = self.obs.shape[1]
            self.value = _Net(dim, 1, list(hidden), image_size)
            out = self.chunk * self.actions.shape[1]
            self.policy = (_Net(dim, out, list(hidden), image_size, dropout) if self.members == 1
                           else _EnsembleNet(dim, out, list(hidden), self.members, dropout))
            self.rng_state = torch.get_rng_state()
        # the acting policy: an exponential moving average of the trained weights (with ``ema``), else the weights
        self.acting = copy.deepcopy(self.policy) if self.ema else self.policy
        self.opt = torch.optim.Adam(self.policy.parameters(), lr=learning_rate)
        self.weights: torch.Tensor | None = None
        self.value_loss = float("nan")
        self.steps = 0

    def _batch(self, n: int) -> torch.Tensor:
        return torch.randint(len(self.obs), (n,), generator=self.gen)

    def _policy_batch(self) -> torch.Tensor:
        """Rows of one cloning step: (B,), or (E, B) with an ensemble, each member drawing its own minibatch."""
        n = self.settings["batch_size"]
        return self._batch(n) if self.members == 1 else self._batch(self.members * n).view(self.members, n)

    def fit_value(self) -> None:
        """Regress V on the Monte-Carlo returns, then fix the cloning weights."""
        s = self.settings
        opt = torch.optim.Adam(self.value.parameters(), lr=s["learning_rate"])
        for _ in range(s["value_steps"]):
            i = self._batch(s["value_batch_size"])
            loss = ((self.value(self.obs[i]).squeeze(-1) - self.returns[i]) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.value_loss = loss.item()
        with torch.no_grad():
            v = torch.cat([self.value(self.obs[j:j + 4096]).squeeze(-1) for j in range(0, len(self.obs), 4096)])
        self.weights = advantage_weights(self.returns - v, s["beta"], s["max_weight"])

    def fit(self, n_steps: int) -> dict:
        """``n_steps`` weighted-cloning minibatches (the value net is fitted first if it is not yet); returns the
        mean loss over them and the value loss."""
        if self.weights is None:
            self.fit_value()
        total = 0.0
        self.policy.train()
        with torch.random.fork_rng(devices=[]):   # dropout draws from the learner's own saved stream
            torch.set_rng_state(self.rng_state)
            for _ in range(n_steps):
                i = self._policy_batch()
                w = self.weights[i]
                pred = torch.tanh(self.policy(self.obs[i]))
                if self.chunk == 1:
                    err = ((pred - self.actions[i]) ** 2).sum(-1)
                else:   # mean squared error over the chunk's steps inside the trajectory
                    m = self.chunk_mask[i]
                    e = ((pred.reshape(*i.shape, self.chunk, -1) - self.chunk_actions[i]) ** 2).sum(-1)
                    err = (e * m).sum(-1) / m.sum(-1)
                # normalised so the step size does not follow the weights' scale; an ensemble sums its members' losses
                loss = ((w * err).mean(-1) / w.mean(-1)).sum()
                self.opt.zero_grad()
                loss.backward()
                self.opt.step()
                if self.ema:
                    with torch.no_grad():
                        torch._foreach_lerp_(list(self.acting.parameters()), list(self.policy.parameters()),
                                             1.0 - self.ema)
                total += loss.item()
            self.rng_state = torch.get_rng_state()
        self.steps += n_steps
        return {"actor_loss": total / max(n_steps, 1), "value_loss": self.value_loss}

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Greedy actions for a batch of observations (B, D) -> (B, action_dim), in [-1, 1]; with action chunks one
        observation per call, ensembled over the episode's earlier calls (``reset()`` at each episode start)."""
        return _act(self.acting, x, self.chunk, self.ensemble)

    def reset(self) -> None:
        """A new episode: forget the chunks predicted so far (nothing to forget without chunks)."""
        self.ensemble.reset()

    def weight_share(self, mask: np.ndarray) -> float:
        """Share of the total cloning weight on the transitions of ``mask`` (e.g. the noisy trajectories)."""
        w = self.weights.numpy()
        return float(w[np.asarray(mask, bool)].sum() / w.sum())

    def save(self, path) -> None:
        # 'policy' is what acts (load_policy reads it); with ``ema`` the trained weights go beside it, to resume
        extra = {"trained": self.policy.state_dict()} if self.ema else {}
        torch.save({"settings": self.settings, "policy": self.acting.state_dict(), **extra,
                    "value": self.value.state_dict(),
                    "opt": self.opt.state_dict(), "weights": self.weights, "value_loss": self.value_loss,
                    "steps": self.steps, "gen": self.gen.get_state(), "rng": self.rng_state}, path)

    def load_state(self, path) -> "MCAWR":
        """Continue from a checkpoint of a learner with the same settings (the dataset is the caller's)."""
        ck = torch.load(path, weights_only=False)
        if ck["settings"] != self.settings:
            raise ValueError(f"{path} was saved with awr-mc settings {ck['settings']}, not {self.settings}: "
                             "delete it to start over")
        self.acting.load_state_dict(ck["policy"])
        if self.ema:
            self.policy.load_state_dict(ck["trained"])
        self.value.load_state_dict(ck["value"])
        self.opt.load_state_dict(ck["opt"])
        self.weights, self.value_loss, self.steps = ck["weights"], ck["value_loss"], ck["steps"]
        self.gen.set_state(ck["gen"])
        self.rng_state = ck["rng"]
        return self


def load_policy(path):
    """A saved 'awr-mc' model as a callable ``predict(x)`` object, without its dataset."""
    ck = torch.load(path, weights_only=False)
    s, w = ck["settings"], ck["policy"]
    n_img = 0 if s["image_size"] is None else 3 * s["image_size"] ** 2
    if s.get("members", 1) > 1:
        net = _EnsembleNet(w["weight.0"].shape[1], w[f"weight.{len(s['hidden'])}"].shape[2], s["hidden"],
                           s["members"], s.get("dropout", 0.0))
    else:
        net = _Net(w["mlp.0.weight"].shape[1] + n_img, w["head.weight"].shape[0], s["hidden"], s["image_size"],
                   s.get("dropout", 0.0))
    net.load_state_dict(w)
    chunk = s.get("chunk", 1)
    ensemble = TemporalEnsemble(chunk)

    class Policy:
        def predict(self, x):
            return _act(net, x, chunk, ensemble)

        def reset(self):
            ensemble.reset()
    return Policy()


def _act(net: nn.Module, x, chunk: int, ensemble: TemporalEnsemble) -> np.ndarray:
    if chunk == 1:
        return _greedy(net, x)
    shape = np.shape(x)
    if len(shape) != 2 or shape[0] != 1:
        raise ValueError(f"a policy with action chunks acts on one observation per call (temporal ensembling over "
                         f"the episode): expected a batch of shape (1, obs_dim), got shape {shape}")
    return ensemble(_greedy(net, x)[0].reshape(chunk, -1))[None]


def _greedy(net: nn.Module, x) -> np.ndarray:
    net.eval()   # no dropout when acting
    with torch.no_grad():
        out = torch.tanh(net(torch.as_tensor(np.asarray(x, np.float32))))
        return (out.mean(0) if isinstance(net, _EnsembleNet) else out).numpy()   # an ensemble acts on its mean
