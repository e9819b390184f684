"""The photo model's work: encoded photo bytes -> every face's box, label scores and detection score.

One function serves both hosts of the `face2hbe_photo` model: the embedded server's bound
callable (serving/embedded.py) and the Triton Python-backend adapter for NVIDIA's container
(model_repository/face2hbe_photo/1/model.py). Decoding, limits, detection and cropping are the
client's own (detection.decode_for_detection: one decode, reduced to the detection size for a big JPEG;
detection.detect_faces, detection.face_crops), so a photo gives the same boxes and crops on either side; the crops are scored by whatever `score_crops` calls
(the face2hbe model over BLS, so its dynamic batcher gathers faces from many photos).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import contract
from .detection import DEFAULT_MAX_FACES, DetectorSettings, decode_for_detection, detect_faces_scored, face_crops
from .errors import BadImageError
from .imaging import DEFAULT_MAX_FILE_BYTES, DEFAULT_MAX_PIXELS

# Model config parameters of the photo model that carry its limits (next to labels and thresholds).
PARAM_MAX_FACES = "max_faces"
PARAM_MAX_PIXELS = "max_pixels"
PARAM_MAX_FILE_BYTES = "max_file_bytes"
# Optional, "true" (the default) or "false": decode a big JPEG reduced to the detection size (DetectorSettings.draft).
# "false" decodes every photo at full resolution, as before issue #25 (more time and memory; benchmarks compare both).
PARAM_DRAFT_DECODE = "draft_decode"
PHOTO_INSTANCE_COUNT = 4  # photos decoded and detected at once per server (config instance_group count)


@dataclass(frozen=True)
class PhotoSettings:
    """Limits and detector of the photo model; the defaults are the client's (Limits, DetectorSettings)."""

    max_faces: int = DEFAULT_MAX_FACES  # the largest faces are kept
    max_pixels: int = DEFAULT_MAX_PIXELS  # checked from the header, before decoding
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    detector: DetectorSettings = field(default_factory=DetectorSettings)

    def __post_init__(self):
        if min(self.max_faces, self.max_pixels, self.max_file_bytes) < 1:
            raise ValueError("max_faces, max_pixels and max_file_bytes must be >= 1")

    def parameters(self) -> dict[str, str]:
        """The limits as model config parameters (string values)."""
        return {
            PARAM_MAX_FACES: str(self.max_faces),
            PARAM_MAX_PIXELS: str(self.max_pixels),
            PARAM_MAX_FILE_BYTES: str(self.max_file_bytes),
        }

    @classmethod
    def from_parameters(cls, params: dict[str, str]) -> "PhotoSettings":
        """Settings from model config parameters (key -> string); absent keys keep their defaults."""
        keys = {PARAM_MAX_FACES: "max_faces", PARAM_MAX_PIXELS: "max_pixels", PARAM_MAX_FILE_BYTES: "max_file_bytes"}
        values = {}
        for key, name in keys.items():
            if key in params:
                try:
                    values[name] = int(params[key])
                except ValueError:
                    raise ValueError(f"model parameter {key!r} must be an integer, not {params[key]!r}") from None
        if PARAM_DRAFT_DECODE in params:
            flag = params[PARAM_DRAFT_DECODE].strip().lower()
            if flag not in ("true", "false"):
                raise ValueError(
                    f"model parameter {PARAM_DRAFT_DECODE!r} must be true or false, not {params[PARAM_DRAFT_DECODE]!r}"
                )
            values["detector"] = DetectorSettings(draft=flag == "true")
        return cls(**values)


@dataclass
class PhotoFaces:
    """The kept faces of one photo, in detect_faces order (largest first); crops stay in memory only."""

    boxes: np.ndarray  # int32 [N, 4]: top, right, bottom, left in pixels of the EXIF-rotated photo
    detection_scores: np.ndarray  # float32 [N]
    crops: np.ndarray  # uint8 [N, *contract.INPUT_SHAPE]
    faces_total: int  # faces found before max_faces


def photo_bytes(tensor, name: str = contract.PHOTO_INPUT_NAME) -> bytes:
    """The one encoded photo of a request's BYTES input (shape [1]), or BadImageError naming `name`."""
    array = np.asarray(tensor, dtype=object)
    if array.size != 1:
        raise BadImageError(
            name, f"expected one photo (shape {list(contract.PHOTO_INPUT_SHAPE)}), got shape {list(array.shape)}"
        )
    data = array.reshape(-1)[0]
    if isinstance(data, (bytearray, memoryview, np.bytes_)):
        data = bytes(data)
    if not isinstance(data, bytes):
        raise BadImageError(name, f"expected the photo's encoded bytes, got {type(data).__name__}")
    return data


def find_faces(data: bytes, settings: PhotoSettings | None = None, name: str = contract.PHOTO_INPUT_NAME) -> PhotoFaces:
    """Decode `data` within the limits, detect, keep the largest max_faces faces and crop them.

    Raises BadImageError (naming `name` and the reason) for empty, oversized, undecodable or
    too-many-pixel photos, and for photos the detector cannot process.
    """
    settings = settings or PhotoSettings()
    image = decode_for_detection(data, name, settings.detector, settings.max_pixels, settings.max_file_bytes)
    try:
        found = detect_faces_scored(image, settings.detector)
    except RuntimeError as exc:  # dlib's error for images it cannot process
        raise BadImageError(name, f"face detection failed ({' '.join(str(exc).split())[:200]})") from None
    kept = found[: settings.max_faces]
    boxes = [box for box, _ in kept]
    return PhotoFaces(
        boxes=np.array([box.as_list() for box in boxes], dtype=contract.numpy_dtype(contract.BOXES_DTYPE)).reshape(
            -1, 4
        ),
        detection_scores=np.array(
            [score for _, score in kept], dtype=contract.numpy_dtype(contract.DETECTION_SCORES_DTYPE)
        ),
        crops=face_crops(image, boxes),
        faces_total=len(found),
    )


# The face model's outputs the photo model passes on, one row per face: (name, datatype, width).
FACE_OUTPUTS = (
    (contract.OUTPUT_NAME, contract.OUTPUT_DTYPE, len(contract.LABELS)),
    (contract.ATTRIBUTES_NAME, contract.ATTRIBUTES_DTYPE, len(contract.ATTRIBUTE_LABELS)),
)
FACE_OUTPUT_NAMES = tuple(name for name, _, _ in FACE_OUTPUTS)


def photo_outputs(faces: PhotoFaces, scored: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The photo model's outputs by contract name, with the contract's datatypes (one row per face)."""
    outputs = {contract.BOXES_NAME: faces.boxes}
    for name, dtype, width in FACE_OUTPUTS:
        rows = np.asarray(scored[name], dtype=contract.numpy_dtype(dtype)).reshape(-1, width)
        if len(rows) != len(faces.boxes):
            raise ValueError(f"{len(rows)} {name} rows for {len(faces.boxes)} faces")
        outputs[name] = rows
    outputs[contract.DETECTION_SCORES_NAME] = faces.detection_scores
    return outputs


def score_photo(
    data: bytes,
    score_crops: Callable[[np.ndarray], dict[str, np.ndarray]],
    settings: PhotoSettings | None = None,
    name: str = contract.PHOTO_INPUT_NAME,
) -> dict[str, np.ndarray]:
    """Photo bytes -> the photo model's outputs.

    `score_crops` maps uint8 crops [n<=MAX_BATCH_SIZE,...] to the face model's outputs by name (FACE_OUTPUT_NAMES:
    scores [n, labels], attributes [n, attribute labels]). No face gives empty outputs (shapes [0,4], [0,labels],
    [0], [0,attribute labels]) and no call to `score_crops`.
    """
    faces = find_faces(data, settings, name)
    chunks = [
        score_crops(faces.crops[i : i + contract.MAX_BATCH_SIZE])
        for i in range(0, len(faces.crops), contract.MAX_BATCH_SIZE)
    ]
    scored = {
        n: np.concatenate([c[n] for c in chunks]) if chunks else np.zeros((0, width), np.float32)
        for n, _, width in FACE_OUTPUTS
    }
    return photo_outputs(faces, scored)
