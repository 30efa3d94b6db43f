"""Channels clustered by what they respond to: the signatures (a layer's outputs on training images) and
the clusterings that ACP (DBSCAN, for a preliminary width) and functionality-oriented pruning (a
dendrogram cut at a distance, for which channels are redundant) run over them."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn as nn

from harness.core import distributed
from harness.core.hooks import HookSet
from harness.core.surgery import eval_mode


@torch.no_grad()
def site_outputs(
    model: nn.Module,
    sites: dict[str, str],
    loader: Iterable,
    samples: int,
    device: torch.device,
    per_image: bool = False,
) -> dict[str, torch.Tensor]:
    """What each site (a module name, per group key) outputs on the first ``samples`` training images.

    ``per_image=False``: {key: (channels, H*W)}, the maps averaged over the images (in a distributed run
    ``samples`` is split over the ranks' shards and the sums added up). ``per_image=True``: {key: (channels,
    images)}, each channel's spatially pooled response per image; in a distributed run rank 0's images,
    broadcast, so that every rank decides alike."""
    kept: dict[str, list[torch.Tensor]] = {}

    def keep(key):
        def hook(module, inputs, output):  # returns None: keeps the output unchanged
            out = output.detach()
            if per_image:
                batch = out.flatten(2).mean(2) if out.dim() > 2 else out  # (images, channels)
            else:
                batch = out.flatten(2).sum(0) if out.dim() > 2 else out.sum(0)[:, None]
            kept.setdefault(key, []).append(batch.cpu())

        return hook

    hooks = HookSet(model, [(site, keep(key)) for key, site in sites.items()])
    share = samples if per_image else -(-samples // distributed.world_size())
    seen = 0
    try:
        with eval_mode(model):
            for x, _ in loader:
                x = x[: share - seen].to(device)
                model(x)
                seen += len(x)
                if seen >= share:
                    break
    finally:
        hooks.remove()
    if per_image:
        rows = {k: torch.cat(v).T.contiguous() for k, v in sorted(kept.items())}
        return distributed.broadcast(rows if distributed.is_main() else None)
    total = int(distributed.all_reduce_sum(torch.tensor([seen])).item())
    return {k: distributed.all_reduce_sum(sum(v)) / max(total, 1) for k, v in sorted(kept.items())}


def dbscan_count(rows: torch.Tensor, eps: float, min_samples: int) -> int:
    """Clusters + noise points of DBSCAN (cosine) over the rows (channels x features): ACP's width."""
    from sklearn.cluster import DBSCAN

    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit(rows.double().numpy()).labels_
    return len(set(labels) - {-1}) + int((labels == -1).sum())


def cosine_distances(rows: torch.Tensor) -> np.ndarray:
    """Condensed (scipy order) cosine distances between rows; an all-zero row (a dead channel) is at 0 from
    other zero rows and 1 from the rest, instead of NaN."""
    from scipy.spatial.distance import squareform

    x = rows.double()
    norms = x.norm(dim=1, keepdim=True)
    unit = torch.where(norms > 0, x / norms.clamp_min(1e-300), torch.zeros_like(x))
    d = (1 - unit @ unit.T).clamp(0, 2)
    zero = (norms.squeeze(1) == 0).nonzero().flatten()
    d[zero, :] = 1.0
    d[:, zero] = 1.0
    d[zero[:, None], zero[None, :]] = 0.0
    d.fill_diagonal_(0.0)
    return squareform(((d + d.T) / 2).numpy(), checks=False)


class Dendrogram:
    """Average-linkage agglomerative clustering of the rows by cosine distance, cut at any distance."""

    def __init__(self, rows: torch.Tensor):
        from scipy.cluster.hierarchy import linkage

        self.n = rows.shape[0]
        self.tree = linkage(cosine_distances(rows), method="average") if self.n > 1 else None

    @property
    def heights(self) -> list[float]:
        """The distances at which two clusters merge, ascending."""
        return [] if self.tree is None else sorted(float(h) for h in self.tree[:, 2])

    def labels(self, threshold: float) -> list[int]:
        """A cluster label per row: rows closer than ``threshold`` (average linkage) share one."""
        if self.tree is None:
            return [0] * self.n
        from scipy.cluster.hierarchy import fcluster

        return [int(v) for v in fcluster(self.tree, t=threshold, criterion="distance")]
