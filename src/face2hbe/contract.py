"""The model contract: the one place that names the served model's tensors.

Training, export, the embedded server, the client and the tests all import
these names; config.pbtxt is checked against them and against the ONNX graph.
"""

from __future__ import annotations

MODEL_NAME = "face2hbe"
MODEL_VERSION = "1"
# The INT8 CPU variant's repository folder: `face2hbe serve` serves it as MODEL_NAME by default (--precision int8).
INT8_MODEL_NAME = f"{MODEL_NAME}_int8"

# Input: RGB face crops, channels last, raw pixels (preprocessing lives in the graph).
INPUT_NAME = "image"
INPUT_DTYPE = "UINT8"  # Triton/KServe v2 datatype name
INPUT_SIZE = 150
INPUT_SHAPE = (INPUT_SIZE, INPUT_SIZE, 3)  # per item; the batch dimension is -1

# Output: one sigmoid probability per label, in LABELS order.
OUTPUT_NAME = "scores"
OUTPUT_DTYPE = "FP32"
LABELS = ("eyewear", "beard", "hat")
OUTPUT_SHAPE = (len(LABELS),)

# Second output: more product labels from the same 43-sigmoid head (LABELS + CelebA's 40 attributes,
# in list_attr_celeba.txt order). Each served attribute label maps to the CelebA attribute it reads.
ATTRIBUTES_NAME = "attributes"
ATTRIBUTES_DTYPE = "FP32"
ATTRIBUTE_SOURCES = {
    "earrings": "Wearing_Earrings",
    "necklace": "Wearing_Necklace",
    "necktie": "Wearing_Necktie",
    "lipstick": "Wearing_Lipstick",
    "makeup": "Heavy_Makeup",
    "mustache": "Mustache",
    "goatee": "Goatee",
    "bald": "Bald",
    "gray_hair": "Gray_Hair",
}
ATTRIBUTE_LABELS = tuple(ATTRIBUTE_SOURCES)
ATTRIBUTES_SHAPE = (len(ATTRIBUTE_LABELS),)
PHOTO_ATTRIBUTES_SHAPE = (-1, len(ATTRIBUTE_LABELS))  # the photo model's attributes: one row per face
# The head's 40 CelebA attributes after LABELS (training/data.py reads them in this order from list_attr_celeba.txt).
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)
HEAD_WIDTH = len(LABELS) + len(CELEBA_ATTRIBUTES)  # 43
# Column of each attribute label in the head's [N, HEAD_WIDTH] output.
ATTRIBUTE_COLUMNS = tuple(len(LABELS) + CELEBA_ATTRIBUTES.index(ATTRIBUTE_SOURCES[label]) for label in ATTRIBUTE_LABELS)
# Every label the model serves: the outputs' labels in output order (scores, then attributes).
SERVED_LABELS = LABELS + ATTRIBUTE_LABELS

# The photo model: one encoded photo in (JPEG, PNG, WebP, GIF first frame, BMP, TIFF, HEIC), every
# face's box, label scores and detection score out. Detection and cropping run on the server with the
# client's own functions; the crops are scored by MODEL_NAME, so its dynamic batcher gathers faces
# from many photos. Not batched itself (outputs have one row per face): max_batch_size 0.
PHOTO_MODEL_NAME = f"{MODEL_NAME}_photo"
PHOTO_INPUT_NAME = "photo"
PHOTO_INPUT_DTYPE = "BYTES"
PHOTO_INPUT_SHAPE = (1,)
BOXES_NAME = "boxes"  # (top, right, bottom, left) in pixels of the EXIF-rotated photo
BOXES_DTYPE = "INT32"
BOXES_SHAPE = (-1, 4)
DETECTION_SCORES_NAME = "detection_scores"
DETECTION_SCORES_DTYPE = "FP32"
DETECTION_SCORES_SHAPE = (-1,)
PHOTO_SCORES_SHAPE = (-1, len(LABELS))  # OUTPUT_NAME / OUTPUT_DTYPE, one row per face
# A refused photo (unreadable, above a limit) is INVALID_ARGUMENT / HTTP 400 with one line naming the reason,
# from `face2hbe serve` and NVIDIA's container alike (the same face2hbe_photo/1/model.py).

# Largest batch one request may carry (Triton max_batch_size).
MAX_BATCH_SIZE = 32

# Keras VGG16 "caffe" preprocessing: RGB->BGR then subtract the ImageNet BGR mean.
VGG_BGR_MEAN = (103.939, 116.779, 123.68)

# Server defaults (Triton's standard ports), loopback unless told otherwise.
DEFAULT_HOST = "127.0.0.1"
HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002

# Model config parameter keys that carry the label order and thresholds to clients.
PARAM_LABELS = "labels"
PARAM_THRESHOLDS = "thresholds"  # a JSON object: every served label (scores' and attributes') -> its threshold
# The attributes output's label order. `labels` keeps describing `scores` alone, so clients that read
# only those (like the Node client) still index the scores tensor by `labels` and take its thresholds.
PARAM_ATTRIBUTE_LABELS = "attribute_labels"
DEFAULT_THRESHOLD = 0.5
# The served labels that are production-grade (comma-separated, served order): recommended to shoppers. The others
# are scored and reported, and recommended only by a catalog that opts them in (docs/client.md). Written from the
# measured ROC AUC on the CelebA test split (human labels): a label is production-grade at PRODUCTION_AUC_BAR or
# above. A config without the parameter (written before it) treats every served label as production-grade.
PARAM_PRODUCTION_LABELS = "production_labels"
PRODUCTION_AUC_BAR = 0.90

# Every other spelling of a datatype derives from its KServe v2 name above.
_NUMPY_NAMES = {"UINT8": "uint8", "INT32": "int32", "FP32": "float32", "BYTES": "object"}


def numpy_dtype(datatype: str) -> str:
    """numpy's name for a KServe v2 datatype ("UINT8" -> "uint8"); ONNX graphs report the same names."""
    return _NUMPY_NAMES[datatype]


def config_type(datatype: str) -> str:
    """The Triton model-config enum name for a KServe v2 datatype ("UINT8" -> "TYPE_UINT8")."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"
