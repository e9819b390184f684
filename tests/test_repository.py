"""config.pbtxt against the contract and the ONNX graph, with Triton's own proto."""

from __future__ import annotations

import shutil

import pytest

from face2hbe import contract
from face2hbe.errors import ModelRepositoryError
from face2hbe.repository import CONFIG_FILE, labels_and_thresholds, onnx_io, read_config, validate_model_dir

from conftest import REPOSITORY

MODEL_DIR = REPOSITORY / contract.MODEL_NAME


def test_committed_repository_matches_contract_and_graph():
    config, onnx_path = validate_model_dir(MODEL_DIR)
    assert config.name == contract.MODEL_NAME
    assert config.platform == "onnxruntime_onnx"
    assert config.max_batch_size == contract.MAX_BATCH_SIZE
    assert config.HasField("dynamic_batching")
    io = onnx_io(onnx_path)
    assert io["inputs"] == {contract.INPUT_NAME: ("uint8", [-1, *contract.INPUT_SHAPE])}
    assert io["outputs"] == {
        contract.OUTPUT_NAME: ("float32", [-1, len(contract.LABELS)]),
        contract.ATTRIBUTES_NAME: ("float32", [-1, len(contract.ATTRIBUTE_LABELS)]),
    }
    labels_file = MODEL_DIR / config.output[0].label_filename
    assert labels_file.read_text().split() == list(contract.LABELS)
    assert (MODEL_DIR / config.output[1].label_filename).read_text().split() == list(contract.ATTRIBUTE_LABELS)


def test_thresholds_are_published_as_parameters():
    labels, thresholds = labels_and_thresholds(read_config(MODEL_DIR))
    assert labels == list(contract.SERVED_LABELS)  # scores' labels, then the attributes'
    assert set(thresholds) == set(contract.SERVED_LABELS)
    assert all(0.0 < t < 1.0 for t in thresholds.values())


def _copy_model_dir(tmp_path):
    """A copy of the model folder with the (large) ONNX file linked, not copied."""
    target = tmp_path / contract.MODEL_NAME
    (target / "1").mkdir(parents=True)
    shutil.copy(MODEL_DIR / CONFIG_FILE, target / CONFIG_FILE)
    (target / "1" / "model.onnx").symlink_to(MODEL_DIR / "1" / "model.onnx")
    return target


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace('name: "image"', 'name: "input_1"'), "input"),
        (lambda t: t.replace("TYPE_UINT8", "TYPE_FP32"), "input"),
        (lambda t: t.replace('name: "scores"', 'name: "probs"'), "output"),
        (lambda t: t + "\nthis is not protobuf {", "not a valid Triton model config"),
        (lambda t: t.replace("eyewear,beard,hat", "beard,eyewear,hat"), "labels"),
        (lambda t: t.replace("earrings,necklace", "necklace,earrings"), "labels"),
        (lambda t: t.replace('name: "attributes"', 'name: "extra"'), "output"),
        (lambda t: t.replace("dims: 9", "dims: 40"), "output"),
    ],
)
def test_validation_names_the_problem(tmp_path, edit, message):
    model_dir = _copy_model_dir(tmp_path)
    config_file = model_dir / CONFIG_FILE
    config_file.write_text(edit(config_file.read_text()))
    with pytest.raises(ModelRepositoryError, match=message):
        validate_model_dir(model_dir)


def test_validation_reports_missing_model_file(tmp_path):
    model_dir = _copy_model_dir(tmp_path)
    (model_dir / "1" / "model.onnx").unlink()
    with pytest.raises(ModelRepositoryError, match="missing model file"):
        validate_model_dir(model_dir)


def test_single_output_config_of_older_models_stays_readable(tmp_path):
    """A config written before the attributes output: scores' labels and thresholds only, defaults elsewhere."""
    from face2hbe.export.repository import build_config, write_config
    from face2hbe.repository import output_labels

    write_config(
        build_config({"eyewear": 0.4, "beard": 0.3, "hat": 0.2}, attributes=False), tmp_path / contract.MODEL_NAME
    )
    config = read_config(tmp_path / contract.MODEL_NAME)
    assert [o.name for o in config.output] == [contract.OUTPUT_NAME]
    assert not (tmp_path / contract.MODEL_NAME / "attribute_labels.txt").exists()
    assert output_labels(config) == {contract.OUTPUT_NAME: list(contract.LABELS)}
    assert labels_and_thresholds(config) == (list(contract.LABELS), {"eyewear": 0.4, "beard": 0.3, "hat": 0.2})


def test_int8_graph_quantized_from_another_fp32_file_is_refused(tmp_path):
    """face2hbe_int8 records the sha256 of the fp32 file it came from; a repository pairing it with another fp32 file
    (a new model exported, the old INT8 left behind) does not validate, so `face2hbe serve` refuses it."""
    import onnx

    from face2hbe.export.quantize import record_source
    from face2hbe.repository import SOURCE_SHA256_KEY, check_quantized_source, file_sha256, onnx_build_info

    for name in (contract.MODEL_NAME, contract.INT8_MODEL_NAME):
        shutil.copytree(REPOSITORY / name, tmp_path / name, ignore=shutil.ignore_patterns("model.onnx"))
    fp32 = tmp_path / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx"
    fp32.symlink_to(REPOSITORY / contract.MODEL_NAME / contract.MODEL_VERSION / "model.onnx")
    int8 = tmp_path / contract.INT8_MODEL_NAME / contract.MODEL_VERSION / "model.onnx"
    shutil.copyfile(REPOSITORY / contract.INT8_MODEL_NAME / contract.MODEL_VERSION / "model.onnx", int8)

    record_source(fp32, int8)
    info = onnx_build_info(int8)
    assert info["source_sha256"] == file_sha256(fp32) and info["working_size"] == onnx_build_info(fp32)["working_size"]
    validate_model_dir(tmp_path / contract.INT8_MODEL_NAME)

    model = onnx.load(str(int8))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, SOURCE_SHA256_KEY: "0" * 64})
    onnx.save(model, str(int8))
    with pytest.raises(ModelRepositoryError, match="quantized from an fp32 graph with sha256 000000000000"):
        validate_model_dir(tmp_path / contract.INT8_MODEL_NAME)
    check_quantized_source(tmp_path / contract.MODEL_NAME)  # the fp32 folder itself has nothing to check
