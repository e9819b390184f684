"""config.pbtxt carries everything NVIDIA's Triton needs, parsed with Triton's own ModelConfig proto."""

from __future__ import annotations

import json

import pytest
from tritonclient.grpc import model_config_pb2 as pb

from face2hbe import contract
from face2hbe.export.repository import (
    WARMUP_BATCH_SIZES,
    BatchingSettings,
    build_config,
    cpu_batching,
    rewrite_config,
    write_config,
)
from face2hbe.repository import labels_and_thresholds, read_config, validate_model_dir

from conftest import REPOSITORY

INT8_DIR = REPOSITORY / f"{contract.MODEL_NAME}_int8"
# Every served label, with a distinct value each, so a round trip that mixes them up fails.
THRESHOLDS = {
    "eyewear": 0.4,
    "beard": 0.3,
    "hat": 0.2,
    **{label: round(0.11 + 0.07 * i, 2) for i, label in enumerate(contract.ATTRIBUTE_LABELS)},
}


def _check_common(config, name: str) -> None:
    assert config.name == name
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == contract.MAX_BATCH_SIZE
    batching = config.dynamic_batching
    assert list(batching.preferred_batch_size) and max(batching.preferred_batch_size) <= contract.MAX_BATCH_SIZE
    assert batching.max_queue_delay_microseconds > 0
    assert [(o.name, o.label_filename) for o in config.output] == [
        (contract.OUTPUT_NAME, "labels.txt"),
        (contract.ATTRIBUTES_NAME, "attribute_labels.txt"),
    ]
    warm = {w.batch_size: w for w in config.model_warmup}
    assert set(WARMUP_BATCH_SIZES) <= set(warm)
    for w in warm.values():
        sample = w.inputs[contract.INPUT_NAME]
        assert sample.data_type == pb.TYPE_UINT8 and list(sample.dims) == list(contract.INPUT_SHAPE)
        assert sample.zero_data or sample.random_data
    labels, _ = labels_and_thresholds(config)
    assert labels == list(contract.SERVED_LABELS)


def _tensorrt(config):
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    return [a for a in accelerators if a.name == "tensorrt"]


def test_gpu_config_has_every_field(tmp_path):
    write_config(build_config(THRESHOLDS), tmp_path / contract.MODEL_NAME)
    config = read_config(tmp_path / contract.MODEL_NAME)
    _check_common(config, contract.MODEL_NAME)
    assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_GPU]
    (trt,) = _tensorrt(config)
    assert trt.parameters["precision_mode"] == "FP16"
    assert int(trt.parameters["max_workspace_size_bytes"]) >= 1 << 28
    assert trt.parameters["trt_engine_cache_enable"] in ("1", "true")
    assert trt.parameters["trt_engine_cache_path"].startswith("/")
    assert labels_and_thresholds(config)[1] == THRESHOLDS  # every served label's threshold round-trips
    assert (tmp_path / contract.MODEL_NAME / "labels.txt").read_text().split() == list(contract.LABELS)
    assert (tmp_path / contract.MODEL_NAME / "attribute_labels.txt").read_text().split() == list(
        contract.ATTRIBUTE_LABELS
    )
    params = config.parameters  # `labels` stays the scores' order (clients that read only it index `scores` by it)
    assert params[contract.PARAM_LABELS].string_value == ",".join(contract.LABELS)
    served = [*contract.LABELS, *contract.ATTRIBUTE_LABELS]  # one `thresholds` object holds every served label
    assert list(json.loads(params[contract.PARAM_THRESHOLDS].string_value)) == served
    assert params[contract.PARAM_ATTRIBUTE_LABELS].string_value == ",".join(contract.ATTRIBUTE_LABELS)


def test_cpu_variant_writes_kind_cpu_without_tensorrt(tmp_path):
    write_config(build_config(THRESHOLDS, cpu_batching()), tmp_path / contract.MODEL_NAME)
    config = read_config(tmp_path / contract.MODEL_NAME)
    _check_common(config, contract.MODEL_NAME)
    assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    assert not _tensorrt(config)


def test_warmup_skips_sizes_above_max_batch():
    config = build_config(THRESHOLDS, BatchingSettings(max_batch_size=8, preferred_batch_sizes=[4, 8]))
    assert [w.batch_size for w in config.model_warmup] == [1, 8]


def test_committed_config_is_generated_by_code(tmp_path):
    """The committed config.pbtxt equals what rewrite_config writes from its own thresholds."""
    committed = read_config(REPOSITORY / contract.MODEL_NAME)
    target = tmp_path / contract.MODEL_NAME
    target.mkdir()
    (target / "config.pbtxt").write_text((REPOSITORY / contract.MODEL_NAME / "config.pbtxt").read_text())
    rewrite_config(target, BatchingSettings(max_queue_delay_us=committed.dynamic_batching.max_queue_delay_microseconds))
    assert read_config(target) == committed
    _check_common(committed, contract.MODEL_NAME)
    assert _tensorrt(committed), "the committed GPU config should enable the TensorRT accelerator"


def test_committed_models_validate():
    validate_model_dir(REPOSITORY / contract.MODEL_NAME)
    if not (INT8_DIR / contract.MODEL_VERSION / "model.onnx").is_file():
        pytest.skip(f"{INT8_DIR} has no model.onnx yet: run `face2hbe export --format int8`")
    config, _ = validate_model_dir(INT8_DIR)
    _check_common(config, INT8_DIR.name)
    assert [g.kind for g in config.instance_group] == [pb.ModelInstanceGroup.KIND_CPU]
    assert not _tensorrt(config)
    fp32 = read_config(REPOSITORY / contract.MODEL_NAME)
    assert labels_and_thresholds(config) == labels_and_thresholds(fp32), (
        "int8 must publish the fp32 model's labels and thresholds"
    )


def test_tensorrt_export_without_gpu_is_one_clear_line(capsys):
    from face2hbe.app.cli import main
    from face2hbe.export.tensorrt import TensorRTUnavailableError, load_tensorrt

    try:
        load_tensorrt()
    except TensorRTUnavailableError:
        pass
    else:
        pytest.skip("TensorRT and a GPU are available here: the plan build runs in test_tensorrt_plan_builds (gpu)")
    assert main(["export", "--format", "tensorrt", "--repository", str(REPOSITORY)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "TensorRT" in err[0] and err[0].startswith("error: ")
    assert not (REPOSITORY / f"{contract.MODEL_NAME}_trt").exists(), "nothing is written when TensorRT is unavailable"


@pytest.mark.gpu
def test_tensorrt_plan_builds(tmp_path):
    from face2hbe.export.tensorrt import PLAN_FILE, TensorRTUnavailableError, export_tensorrt, load_tensorrt

    try:
        load_tensorrt()
    except TensorRTUnavailableError as exc:
        pytest.skip(str(exc))
    source = tmp_path / contract.MODEL_NAME
    (source / contract.MODEL_VERSION).mkdir(parents=True)
    (source / "config.pbtxt").write_text((REPOSITORY / contract.MODEL_NAME / "config.pbtxt").read_text())
    (source / contract.MODEL_VERSION / "model.onnx").symlink_to(
        REPOSITORY / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx"
    )
    target = export_tensorrt(tmp_path)
    assert (target / contract.MODEL_VERSION / PLAN_FILE).stat().st_size > 0
    assert read_config(target).platform == "tensorrt_plan"


PHOTO_DIR = REPOSITORY / contract.PHOTO_MODEL_NAME


def test_committed_photo_config_is_generated_by_code(tmp_path):
    """face2hbe_photo/config.pbtxt equals what write_photo_config derives from the committed face2hbe config."""
    from face2hbe.export.repository import write_photo_config
    from face2hbe.repository import validate_photo_dir

    (tmp_path / contract.MODEL_NAME).mkdir()
    (tmp_path / contract.MODEL_NAME / "config.pbtxt").write_text(
        (REPOSITORY / contract.MODEL_NAME / "config.pbtxt").read_text()
    )
    write_photo_config(tmp_path)
    committed = validate_photo_dir(PHOTO_DIR)
    assert read_config(tmp_path / contract.PHOTO_MODEL_NAME) == committed
    assert (PHOTO_DIR / "labels.txt").read_text() == (tmp_path / contract.PHOTO_MODEL_NAME / "labels.txt").read_text()
    assert (
        committed.backend == "python" and committed.max_batch_size == 0 and not committed.HasField("dynamic_batching")
    )
    assert labels_and_thresholds(committed) == labels_and_thresholds(read_config(REPOSITORY / contract.MODEL_NAME))
    assert [g.kind for g in committed.instance_group] == [pb.ModelInstanceGroup.KIND_CPU] and committed.instance_group[
        0
    ].count > 1
    assert (PHOTO_DIR / contract.MODEL_VERSION / "model.py").is_file()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('name: "photo"', 'name: "image"'), "input"),
        (lambda t: t.replace("TYPE_INT32", "TYPE_FP32"), "output"),
        (
            lambda t: t.replace('name: "face2hbe_photo"', 'name: "face2hbe_photo"\nmax_batch_size: 8'),
            "max_batch_size must be 0",
        ),
        (lambda t: t.replace("eyewear,beard,hat", "hat,beard,eyewear"), "labels"),
    ],
)
def test_photo_config_check_names_the_problem(tmp_path, edit, message):
    from face2hbe.errors import ModelRepositoryError
    from face2hbe.repository import validate_photo_dir

    target = tmp_path / contract.PHOTO_MODEL_NAME
    target.mkdir()
    (target / "config.pbtxt").write_text(edit((PHOTO_DIR / "config.pbtxt").read_text()))
    with pytest.raises(ModelRepositoryError, match=message):
        validate_photo_dir(target)


def test_written_thresholds_reach_every_config_that_publishes_them(tmp_path):
    """`face2hbe thresholds --write` (thresholds.apply): face2hbe, face2hbe_int8 and the photo model's copy agree."""
    from face2hbe.app.thresholds import apply

    for name in (contract.MODEL_NAME, INT8_DIR.name, contract.PHOTO_MODEL_NAME):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text((REPOSITORY / name / "config.pbtxt").read_text())
    written = apply(tmp_path, THRESHOLDS)
    assert len(written) == 3
    for name in (contract.MODEL_NAME, INT8_DIR.name, contract.PHOTO_MODEL_NAME):
        assert labels_and_thresholds(read_config(tmp_path / name))[1] == THRESHOLDS, name


def test_production_labels_follow_the_measured_auc_and_the_bar():
    from face2hbe.export.repository import production_labels

    aucs = {"eyewear": 0.99, "beard": 0.90, "hat": float("nan"), "earrings": 0.8999, "necklace": None, "bald": 0.95}
    assert contract.PRODUCTION_AUC_BAR == 0.90
    assert production_labels(aucs) == ["eyewear", "beard", "bald"]  # served order; unmeasured and NaN are not
    assert production_labels(aucs, bar=0.96) == ["eyewear"]
    assert production_labels({}) == []


def test_committed_configs_publish_the_production_labels_of_the_measured_aucs():
    """face2hbe, face2hbe_int8 and face2hbe_photo publish the same production labels: those whose CelebA-test ROC AUC
    in docs/eval/thresholds.json (the served model's measurement) reaches the bar."""
    from face2hbe.app.thresholds import production
    from face2hbe.repository import production_labels_in, validate_photo_dir

    measured = json.loads((REPOSITORY.parent / "docs" / "eval" / "thresholds.json").read_text())
    expected = production(measured)
    assert "earrings" not in expected and {"eyewear", "beard", "hat"} <= set(expected)
    for config in (read_config(REPOSITORY / contract.MODEL_NAME), read_config(INT8_DIR), validate_photo_dir(PHOTO_DIR)):
        assert production_labels_in(config) == expected, config.name


def test_written_production_labels_reach_every_config_and_survive_a_rewrite(tmp_path):
    from face2hbe.app.thresholds import apply
    from face2hbe.export.attributes import batching_of
    from face2hbe.repository import production_labels_in

    names = (contract.MODEL_NAME, INT8_DIR.name, contract.PHOTO_MODEL_NAME)
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.pbtxt").write_text((REPOSITORY / name / "config.pbtxt").read_text())
    apply(tmp_path, THRESHOLDS, ["hat", "eyewear", "bald"])
    for name in names:
        assert production_labels_in(read_config(tmp_path / name)) == ["eyewear", "hat", "bald"], name  # served order
    apply(tmp_path, THRESHOLDS)  # no production labels given (thresholds --no-test): each config keeps its own
    rewrite_config(tmp_path / contract.MODEL_NAME, batching_of(read_config(tmp_path / contract.MODEL_NAME)))
    for name in names:
        assert production_labels_in(read_config(tmp_path / name)) == ["eyewear", "hat", "bald"], name
    assert production_labels_in(build_config(THRESHOLDS)) is None  # unmeasured: readers treat every label as production


def test_production_labels_naming_an_unserved_label_are_refused(tmp_path):
    from face2hbe.errors import ModelRepositoryError
    from face2hbe.repository import validate_photo_dir

    with pytest.raises(ModelRepositoryError, match="not served labels"):
        build_config(THRESHOLDS, production=["eyewear", "sparkle"])
    target = tmp_path / contract.PHOTO_MODEL_NAME
    target.mkdir()
    (target / "config.pbtxt").write_text(
        (PHOTO_DIR / "config.pbtxt").read_text().replace("eyewear,beard,hat,necktie", "eyewear,beard,cap,necktie")
    )
    with pytest.raises(ModelRepositoryError, match="production_labels.*'cap'"):
        validate_photo_dir(target)


def test_model_card_lists_the_production_labels_as_measured(tmp_path):
    """docs/model.md's production section is thresholds.production_markdown of the committed measurement."""
    from face2hbe.app.thresholds import PRODUCTION_END, PRODUCTION_START, production_markdown, write_report

    measured = json.loads((REPOSITORY.parent / "docs" / "eval" / "thresholds.json").read_text())
    card = (REPOSITORY.parent / "docs" / "model.md").read_text()
    section = card.split(PRODUCTION_START, 1)[1].split(PRODUCTION_END, 1)[0]
    assert production_markdown(measured) in section
    rows = {line.split("|")[1].strip(): line for line in section.splitlines() if line.startswith("| ")}
    assert "| no:" in rows["earrings"] and rows["eyewear"].endswith("| yes |")  # below and above the bar
    out = tmp_path / "card.md"
    write_report(measured, out, "face2hbe thresholds ...")
    assert production_markdown(measured) in out.read_text()


def test_model_card_thresholds_are_the_served_ones():
    """The card's thresholds table (written with the configs by `face2hbe thresholds --write --report`) gives every
    served label the threshold the committed config publishes: no second, hand-kept copy of them."""
    from face2hbe.app.thresholds import REPORT_END, REPORT_START

    card = (REPOSITORY.parent / "docs" / "model.md").read_text()
    table = card.split(REPORT_START, 1)[1].split(REPORT_END, 1)[0]
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    header = [cell.strip() for cell in rows[0]]
    column = header.index("threshold")
    in_card = {cells[0].strip(): float(cells[column]) for cells in rows[1:]}
    _, served = labels_and_thresholds(read_config(REPOSITORY / contract.MODEL_NAME))
    assert in_card == pytest.approx(served) and set(in_card) == set(contract.SERVED_LABELS)
