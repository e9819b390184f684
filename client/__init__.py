"""face2hbe.client: photos -> faces -> Triton -> SKUs."""

from face2hbe.detection import DetectorSettings  # noqa: F401

from .recommend import Limits, Recommender, RunSummary  # noqa: F401
from .results import FaceResult, ImageResult, ProfileResult  # noqa: F401
