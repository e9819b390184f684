"""A labelled data set's split as the served labels see it: detected crops, one target column per served label.

The commands that measure the served graph (thresholds, slices, promote's gate) and the benchmarks that compare
graphs on real faces (loadtest/bench/cpu_variants.py, tools/int8_ties.py) load their test and validation faces here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from face2hbe import contract


def target_name(label: str) -> str:
    """The data adapters' target column of a served label (CelebA attributes as `celeba_<Attribute>`)."""
    return label if label in contract.LABELS else f"celeba_{contract.ATTRIBUTE_SOURCES[label]}"


@dataclass
class Domain:
    name: str  # "celeba" | "lfw"
    split: str
    crops: np.ndarray
    targets: np.ndarray  # [N, len(SERVED_LABELS)], -1 unknown, soft targets binarised at 0.5 by the metrics
    images: int
    scores: np.ndarray | None = field(default=None, repr=False)
    # The domain's own attributes by CelebA name (CelebA's labels, LFW's FaRL probabilities at 0.5; unknown = absent).
    attributes: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    groups: np.ndarray | None = field(default=None, repr=False)  # per face: the person (LFW, celeba_more) or the image


def load_domain(spec: str, split: str, cache_dir: Path | None, seed: int = 0, progress: bool = True) -> Domain:
    """A data spec's `split` ("val" or "test", seeded by identity as in training) as detected crops and the served
    labels' targets, with the domain's attributes and each face's group (person or image) for the bootstraps."""
    from .data import SPLITS, build_crops, split_by_group
    from .train import load_sets

    (dataset,) = load_sets([spec], attributes=True, limit=None)
    dataset = dataset.subset(split_by_group(dataset.groups, seed=seed)[SPLITS[split]])
    crops, kept = build_crops(dataset, cache_dir, progress=progress)
    targets = dataset.targets[kept]
    columns = [dataset.target_names.index(target_name(label)) for label in contract.SERVED_LABELS]
    attributes = {
        n[len("celeba_") :]: targets[:, i] >= 0.5 for i, n in enumerate(dataset.target_names) if n.startswith("celeba_")
    }
    return Domain(
        spec.partition(":")[0],
        split,
        crops,
        targets[:, columns],
        len(dataset),
        attributes=attributes,
        groups=np.asarray(dataset.groups)[kept],
    )
