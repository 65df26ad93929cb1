"""CoTracker3 point tracker (the paper's tracker), behind relam's :class:`PointTracker` interface.

Backends, tried in this order:

(a) ``model_obj``: any torch module with CoTracker's predictor call convention
    ``model(video (1, T, 3, H, W) float 0..255, queries=(1, N, 3) [t, x, y]) -> (tracks (1, T, N, 2), visibility
    (1, T, N))`` -- e.g. ``torch.hub.load("facebookresearch/co-tracker", "cotracker3_offline")`` loaded elsewhere.
    With ``online=True`` the module must follow ``CoTrackerOnlinePredictor``'s protocol instead (see
    :meth:`CoTracker._run_online`).
(b) the ``cotracker`` package (``pip install -c constraints.txt git+https://github.com/facebookresearch/co-tracker
    einops timm``; its model code imports timm, which pulls torchvision -- so not on the team's CPU machines, where
    torchvision must not be installed: there use ``lk`` or ``sim``) with a local checkpoint file (``checkpoint=``
    or ``$RELAM_COTRACKER_CHECKPOINT``; CoTracker3 weights are ``scaled_offline.pth`` / ``scaled_online.pth`` from
    huggingface.co/facebook/cotracker3).
(c) ``torch.hub`` -- only from what is ALREADY in the hub cache (``torch.hub.get_dir()``): the repository folder
    ``facebookresearch_co-tracker_*`` and the checkpoint in ``<hub>/checkpoints/`` (or ``checkpoint=``). Nothing is
    downloaded here; run ``torch.hub.load("facebookresearch/co-tracker", "cotracker3_offline")`` once on a machine
    with internet and copy its hub folder to fill the cache.

Coordinates: relam puts pixel (i, j)'s centre at (j + 0.5, i + 0.5) (relam.envs.camera). CoTracker uses pixel
indices, centres at integers: its predictor maps a W-pixel row onto the model's resolution with
``F.interpolate(..., align_corners=True)`` and scales x by ``(W_model - 1) / (W - 1)``, which fixes pixel centre 0
at 0 and centre W-1 at W-1 (cotracker/predictor.py, ``_compute_sparse_tracks``). So queries go in as ``ours - 0.5``
and tracks come back as ``theirs + 0.5``; tracks are not clipped (points may leave the image).
"""
from __future__ import annotations

import glob
import os

import numpy as np

from relam.perception.base import PerceptionError, check_queries, check_video

ENV_VAR = "RELAM_COTRACKER_CHECKPOINT"
HUB_REPO = "facebookresearch/co-tracker"
HUB_WEIGHTS = {False: "scaled_offline.pth", True: "scaled_online.pth"}
VISIBILITY_THRESHOLD = 0.5  # only for modules that return visibility as probabilities (the predictors return bool)

_HOW_TO = (
    "To use CoTracker: `pip install -c constraints.txt git+https://github.com/facebookresearch/co-tracker einops timm` "
    "(CoTracker's model code imports timm and einops; timm pulls torchvision, so this works only where torchvision "
    "does -- never install it on the team's CPU machines) and pass a local checkpoint (download "
    "https://huggingface.co/facebook/cotracker3/resolve/main/scaled_offline.pth on a machine with internet; "
    f"CoTracker(checkpoint=PATH) or ${ENV_VAR}=PATH), or run "
    "`torch.hub.load('facebookresearch/co-tracker', 'cotracker3_offline')` once on a machine with internet and copy "
    "its torch.hub folder (torch.hub.get_dir()) here. Fallbacks without CoTracker: make_tracker('lk') (OpenCV "
    "Lucas-Kanade, no weights) or make_tracker('sim') (simulator ground truth)."
)


def _load_state_dict(path: str):
    import torch

    state = torch.load(path, map_location="cpu")
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # cotracker's build_cotracker accepts both layouts
    return state


def _hub_repo_dirs() -> list[str]:
    import torch

    return sorted(d for d in glob.glob(os.path.join(torch.hub.get_dir(), "facebookresearch_co-tracker_*"))
                  if os.path.isfile(os.path.join(d, "hubconf.py")))


class CoTracker:
    """CoTracker3 (offline by default; ``online=True`` uses the sliding-window online predictor)."""

    def __init__(self, checkpoint: str | None = None, device: str = "cpu", model_obj=None, online: bool = False):
        self.device, self.online = device, bool(online)
        self.checkpoint = checkpoint if checkpoint is not None else os.environ.get(ENV_VAR) or None
        if self.checkpoint is not None:
            self.checkpoint = os.path.expanduser(str(self.checkpoint))
        if model_obj is not None:
            self.model, self.backend = model_obj, "model_obj"
        else:
            if self.checkpoint is not None and not os.path.isfile(self.checkpoint):
                raise PerceptionError(f"CoTracker checkpoint {self.checkpoint!r} is not a file. " + _HOW_TO)
            self.model, self.backend = self._load()
        if hasattr(self.model, "to"):
            self.model = self.model.to(device)
        if hasattr(self.model, "eval"):
            self.model.eval()

    # ------------------------------------------------------------------ loading
    def _load(self):
        tried = []
        # (b) the pip-installed package + a local checkpoint
        try:
            from cotracker.predictor import CoTrackerOnlinePredictor, CoTrackerPredictor
        except Exception as e:  # ImportError, or a broken install
            tried.append(f"package `cotracker` not importable ({type(e).__name__}: {e})")
        else:
            if self.checkpoint is None:
                tried.append("package `cotracker` found but no checkpoint given")
            else:
                try:
                    cls = CoTrackerOnlinePredictor if self.online else CoTrackerPredictor
                    return cls(checkpoint=self.checkpoint), "cotracker"
                except Exception as e:
                    tried.append(f"cotracker predictor failed on {self.checkpoint!r} ({type(e).__name__}: {e})")
        # (c) torch.hub, cache only (source="local": no network access)
        try:
            import torch

            repos = _hub_repo_dirs()
            weights = self.checkpoint or os.path.join(torch.hub.get_dir(), "checkpoints", HUB_WEIGHTS[self.online])
            if not repos:
                tried.append(f"torch.hub cache {torch.hub.get_dir()!r} has no {HUB_REPO} repository")
            elif not os.path.isfile(weights):
                tried.append(f"torch.hub cache has the repository but not the weights {weights!r}")
            else:
                entry = "cotracker3_online" if self.online else "cotracker3_offline"
                model = torch.hub.load(repos[-1], entry, source="local", pretrained=False)
                model.model.load_state_dict(_load_state_dict(weights))
                return model, "torch.hub"
        except Exception as e:
            tried.append(f"torch.hub load failed ({type(e).__name__}: {e})")
        raise PerceptionError("no CoTracker backend available: " + "; ".join(tried) + ". " + _HOW_TO)

    # ------------------------------------------------------------------ tracking
    def __call__(self, video: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        video, queries = check_video(video), check_queries(queries)
        t_len, n = len(video), len(queries)
        if n == 0:
            return np.zeros((t_len, 0, 2)), np.zeros((t_len, 0), bool)
        v = torch.from_numpy(video).permute(0, 3, 1, 2)[None].float().to(self.device)  # (1, T, 3, H, W) 0..255
        q = torch.zeros((1, n, 3), dtype=torch.float32)
        q[0, :, 1:] = torch.from_numpy(to_cotracker(queries)).float()  # t = 0: queries live on frame 0
        q = q.to(self.device)
        with torch.no_grad():
            tracks, visible = self._run_online(v, q) if self.online else self.model(v, queries=q)
        tracks = _to_numpy(tracks).astype(np.float64)
        visible = _to_numpy(visible)
        if tracks.shape != (1, t_len, n, 2):
            raise PerceptionError(f"CoTracker ({self.backend}) returned tracks of shape {tracks.shape}, expected "
                                  f"{(1, t_len, n, 2)}")
        if visible.ndim == 4 and visible.shape[-1] == 1:
            visible = visible[..., 0]
        if visible.shape != (1, t_len, n):
            raise PerceptionError(f"CoTracker ({self.backend}) returned visibility of shape {visible.shape}, "
                                  f"expected {(1, t_len, n)}")
        tracks = from_cotracker(tracks[0])
        # CoTracker's predictor overwrites the query frame with the query points; do it in float64 so frame 0 is
        # exactly the input (no float32 round trip), as the other trackers do
        tracks[0] = queries
        visible = visible[0] if visible.dtype == bool else visible[0] > VISIBILITY_THRESHOLD
        visible = visible.copy()
        visible[0] = True
        return tracks, visible

    def _run_online(self, v, q):
        """CoTrackerOnlinePredictor protocol (co-tracker README): one ``is_first_step=True`` call registers the
        queries, then windows of ``2 * step`` frames advance by ``step``; each call returns the tracks of every frame
        seen so far. The video is padded with copies of its last frame so the final window is full; the padded
        frames are cut off."""
        import torch

        step = int(getattr(self.model, "step"))
        t_len = v.shape[1]
        self.model(video_chunk=v, is_first_step=True, queries=q)
        padded = torch.cat([v, v[:, -1:].expand(-1, 2 * step, -1, -1, -1)], dim=1)
        tracks = visible = None
        for ind in range(0, t_len, step):
            tracks, visible = self.model(video_chunk=padded[:, ind:ind + 2 * step])
            if ind + 2 * step >= t_len:
                break
        if tracks is None or tracks.shape[1] < t_len:
            got = None if tracks is None else tracks.shape[1]
            raise PerceptionError(f"online CoTracker returned {got} frames for a {t_len}-frame video")
        return tracks[:, :t_len], visible[:, :t_len]


def to_cotracker(points: np.ndarray) -> np.ndarray:
    """relam pixel coordinates (centres at j + 0.5) -> CoTracker's (centres at integer indices)."""
    return np.asarray(points, np.float64) - 0.5


def from_cotracker(points: np.ndarray) -> np.ndarray:
    """CoTracker pixel coordinates (centres at integer indices) -> relam's (centres at j + 0.5)."""
    return np.asarray(points, np.float64) + 0.5


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.dtype.is_floating_point:
            x = x.double()
        return x.numpy()
    return np.asarray(x)
