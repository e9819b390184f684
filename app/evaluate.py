"""Evaluate the served model on a labeled set through the client's path.

It sits on top of the stages, like the CLI: training's data adapters and metrics,
the client's KServe scorer.

Photos go through the same steps as in production: face detection, the
shared crop, a KServe v2 request to the server; aligned crops (CelebA) use
their measured framing. Thresholds are the ones the server publishes.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from face2hbe import metrics
from face2hbe.contract import LABELS
from face2hbe.paths import portable_spec
from face2hbe.training.data import SPLITS, build_crops, split_by_group
from face2hbe.training.train import load_sets


@dataclass
class EvalConfig:
    data: str  # KIND:PATH, as for training
    output: Path
    url: str | None = None
    protocol: str = "grpc"
    split: str = "test"  # train | val | test | all (same seeded split as training)
    seed: int = 0
    limit: int | None = None
    cache_dir: Path | None = None
    progress: bool = True


async def _score_all(crops: np.ndarray, url: str | None, protocol: str):
    from face2hbe.client.inference import AsyncScorer, ClientSettings

    async with AsyncScorer(ClientSettings(url=url, protocol=protocol)) as scorer:
        step = 32
        parts = await asyncio.gather(*(scorer.score(crops[i : i + step]) for i in range(0, len(crops), step)))
        return np.concatenate(parts) if parts else np.zeros((0, len(LABELS)), np.float32), scorer.info


def evaluate(config: EvalConfig) -> dict:
    """Metrics per label at the server's thresholds; writes metrics.json and curves.png."""
    (dataset,) = load_sets([config.data], attributes=False, limit=config.limit)
    if config.split != "all":
        dataset = dataset.subset(split_by_group(dataset.groups, seed=config.seed)[SPLITS[config.split]])
    crops, kept = build_crops(dataset, config.cache_dir, progress=config.progress)
    targets = dataset.targets[kept][:, : len(LABELS)]
    groups = np.asarray(dataset.groups)[kept]  # LFW: the person; CelebA: the image
    scores, info = asyncio.run(_score_all(crops, config.url, config.protocol))
    thresholds = {label: info.thresholds[label] for label in LABELS}
    result = {
        "data": portable_spec(config.data),
        "split": config.split,
        "images": len(dataset),
        "faces_found": int(len(kept)),
        "thresholds": thresholds,
        "ci95_resamples": "identities" if len(set(groups.tolist())) < len(groups) else "images",
        "metrics": metrics.per_label_metrics(targets, scores, LABELS, thresholds),
    }
    for j, label in enumerate(LABELS):
        known, t = metrics.known_binary(targets[:, j])
        if metrics.has_both_classes(t):
            lo, hi = metrics.auc_confidence_interval(t, scores[known, j], groups=groups[known])
            result["metrics"][label]["roc_auc_ci95"] = [lo, hi]
    out = Path(config.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(result, indent=1))
    metrics.plot_curves(targets, scores, LABELS, out / "curves.png", f"({dataset.name}, {config.split})")
    return result
