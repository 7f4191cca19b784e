"""Export: the real CLI on tiny seeded checkpoints; the files it writes are loaded back with
torch.jit and onnxruntime and must give the checkpoint's logits at a new batch size."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from conftest import REPO

from pipeline.checkpoints import load_model, save_model
from pipeline.cli import main
from pipeline.errors import ApexLoopError
from pipeline.export import CHECK_BATCH, EXPORT_BATCH, check_parity
from pipeline.inference import normalise, to_scores
from pipeline.manifest import TaskInfo
from pipeline.models import MEAN, STD, build_model
from pipeline.params import TrainParams, load_section

SIZE = 64
MULTICLASS = TaskInfo("multiclass", ("good", "scratch", "dent"), "good")
MULTILABEL = TaskInfo("multilabel", ("good", "scratch", "dent", "stain"), "good")
# torch 2.14 deprecates torch.jit; loading TorchScript is what a line-side runtime still does
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
BATCH = 5  # neither the export nor the check batch: proves the batch axis is dynamic
assert BATCH not in (EXPORT_BATCH, CHECK_BATCH)


def write_checkpoint(
    path: Path, model_name: str, info: TaskInfo, seed: int, members: int = 1, pool: str = "avg"
) -> Path:
    """Randomly initialised (seeded) models saved as the train stage saves its best model
    (`members` of them: an ensemble, the k-th seeded seed + k)."""
    outputs = len(info.classes) if info.task == "multiclass" else len(info.defect_classes)
    states = []
    with torch.random.fork_rng():
        for k in range(members):
            torch.manual_seed(seed + k)
            states.append(build_model(model_name, outputs, False, 0.0, pool).state_dict())
    params = load_section(REPO / "params.yaml", "train", TrainParams).model_copy(
        update={
            "model": model_name,
            "image_size": SIZE,
            "pretrained": False,
            "ensemble": members,
            "pool": pool,
        }
    )
    save_model(path, states, params, info)
    return path


def images(batch: int, seed: int) -> torch.Tensor:
    """Seeded uint8 images normalised as predict does: float (B, 3, S, S), channels_last."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 3, SIZE, SIZE), generator=generator, dtype=torch.uint8)
    return normalise(pixels, torch.device("cpu"))


def checkpoint_logits(checkpoint: Path, inputs: torch.Tensor) -> np.ndarray:
    model, _, _ = load_model(checkpoint)
    with torch.no_grad():
        return np.asarray(model(inputs).numpy())


def exported_logits(out: Path, inputs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The logits of `inputs` from the ONNX and the TorchScript file in `out`."""
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (onnx_logits,) = session.run(["logits"], {"image": np.ascontiguousarray(inputs.numpy())})
    with torch.no_grad():
        script_logits = torch.jit.load(str(out / "model.ts"))(inputs).numpy()
    return onnx_logits, script_logits


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(checkpoint, export folder) of a resnet18 exported to both formats by the CLI."""
    root = tmp_path_factory.mktemp("export")
    checkpoint = write_checkpoint(root / "model.pt", "resnet18", MULTICLASS, seed=3)
    out = root / "export"
    assert main(["export", "--model", str(checkpoint), "--out", str(out)]) == 0
    return checkpoint, out


def test_export_writes_only_the_three_files(exported: tuple[Path, Path]) -> None:
    _, out = exported
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.onnx", "model.ts"]


def test_torchscript_matches_checkpoint_at_another_batch_size(
    exported: tuple[Path, Path],
) -> None:
    checkpoint, out = exported
    inputs = images(BATCH, seed=11)
    expected = checkpoint_logits(checkpoint, inputs)
    assert np.abs(expected).max() > 0.05  # logits large enough for the comparison to mean much
    loaded = torch.jit.load(str(out / "model.ts"))
    with torch.no_grad():
        actual = loaded(inputs.contiguous()).numpy()
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)


def test_onnx_matches_checkpoint_at_another_batch_size(exported: tuple[Path, Path]) -> None:
    checkpoint, out = exported
    inputs = images(BATCH, seed=12)
    session = onnxruntime.InferenceSession(
        str(out / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (declared,) = session.get_inputs()
    assert (declared.name, declared.shape) == ("image", ["batch", 3, SIZE, SIZE])
    (actual,) = session.run(["logits"], {"image": np.ascontiguousarray(inputs.numpy())})
    assert actual.shape == (BATCH, len(MULTICLASS.classes))
    np.testing.assert_allclose(actual, checkpoint_logits(checkpoint, inputs), rtol=1e-4, atol=1e-4)


def test_sidecar_says_how_to_feed_the_model(exported: tuple[Path, Path]) -> None:
    checkpoint, out = exported
    sidecar = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert (sidecar["task"], sidecar["classes"], sidecar["good_class"]) == (
        "multiclass",
        ["good", "scratch", "dent"],
        "good",
    )
    assert sidecar["image_size"] == SIZE
    assert sidecar["input"]["layout"] == "float32 NCHW, RGB, ImageNet-normalised"
    assert (sidecar["input"]["mean"], sidecar["input"]["std"]) == (list(MEAN), list(STD))
    assert sidecar["output"]["names"] == ["good", "scratch", "dent"]
    assert sidecar["output"]["scores"] == "softmax over outputs"
    assert sidecar["onnx_opset"] == 18
    assert sidecar["checkpoint"]["path"] == str(checkpoint)
    assert set(sidecar["files"]) == {"torchscript", "onnx"}
    for entry in sidecar["files"].values():
        assert 0 <= entry["max_abs_diff"] < 1e-4
        assert len(entry["sha256"]) == 64


def test_torchscript_only_export_of_multilabel_model_removes_stale_onnx(tmp_path: Path) -> None:
    checkpoint = write_checkpoint(tmp_path / "ml.pt", "mobilenet_v3_small", MULTILABEL, seed=5)
    out = tmp_path / "export"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"from an older export")
    argv = ["export", "--model", str(checkpoint), "--out", str(out), "--formats", "torchscript"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["export.json", "model.ts"]
    sidecar = json.loads((out / "export.json").read_text(encoding="utf-8"))
    assert sidecar["output"]["names"] == ["scratch", "dent", "stain"]
    assert sidecar["output"]["scores"] == "sigmoid each"
    assert "onnx_opset" not in sidecar
    inputs = images(BATCH, seed=13)
    with torch.no_grad():
        actual = torch.jit.load(str(out / "model.ts"))(inputs).numpy()
    np.testing.assert_allclose(actual, checkpoint_logits(checkpoint, inputs), rtol=1e-4, atol=1e-4)


def errors_of(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_missing_checkpoint_exits_2_naming_the_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    missing = tmp_path / "models" / "nowhere.pt"
    assert main(["export", "--model", str(missing), "--out", str(tmp_path / "out")]) == 2
    assert str(missing) in errors_of(caplog)
    assert not (tmp_path / "out").exists()


def test_onnx_without_its_packages_says_what_to_install(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.ERROR)
    checkpoint = write_checkpoint(tmp_path / "m.pt", "mobilenet_v3_small", MULTICLASS, seed=1)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # makes `import onnxscript` fail
    argv = ["export", "--model", str(checkpoint), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    message = errors_of(caplog)
    assert "onnxscript" in message and 'pip install -e ".[export]"' in message
    assert not (tmp_path / "out").exists()


def test_parity_check_rejects_a_logit_off_by_more_than_the_tolerance(tmp_path: Path) -> None:
    expected = np.array([[2.0, -1.0], [0.5, 30.0]], dtype=np.float32)
    close = expected + np.array([[1e-5, -1e-5], [0.0, 2e-3]], dtype=np.float32)  # 2e-3 < 3.1e-3
    assert check_parity(tmp_path / "m.onnx", expected, close) == pytest.approx(2e-3, rel=1e-3)
    off = expected + np.array([[0.0, 0.0], [5e-4, 0.0]], dtype=np.float32)  # 5e-4 > 1.5e-4
    with pytest.raises(ApexLoopError, match=r"m\.onnx"):
        check_parity(tmp_path / "m.onnx", expected, off)
    with pytest.raises(ApexLoopError, match="shape"):
        check_parity(tmp_path / "m.onnx", expected, expected[:1])


def test_an_ensemble_exports_as_one_model_giving_its_mean_scores(tmp_path: Path) -> None:
    """Multilabel: the mean of sigmoids goes through the log-space combination in both files."""
    checkpoint = write_checkpoint(tmp_path / "pair.pt", "resnet18", MULTILABEL, seed=7, members=2)
    out = tmp_path / "export"
    assert main(["export", "--model", str(checkpoint), "--out", str(out)]) == 0
    inputs = images(BATCH, seed=17)
    members = [
        write_checkpoint(tmp_path / f"{k}.pt", "resnet18", MULTILABEL, seed=7 + k) for k in (0, 1)
    ]
    expected = np.mean(
        [to_scores(torch.from_numpy(checkpoint_logits(m, inputs)), "multilabel") for m in members],
        axis=0,
    )
    for logits in exported_logits(out, inputs):
        scores = to_scores(torch.from_numpy(logits), "multilabel")
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_a_gem_pooled_model_reloads_and_exports_with_its_learnt_power(tmp_path: Path) -> None:
    """The checkpoint rebuilds with its GeM pooling (a strict load) and learnt power, and both
    files give the checkpoint's logits."""
    checkpoint = write_checkpoint(tmp_path / "gem.pt", "resnet18", MULTICLASS, 4, pool="gem")
    saved = torch.load(checkpoint, weights_only=True)
    saved["state_dict"]["avgpool.p"].fill_(1.5)  # as if training had moved p from 3
    torch.save(saved, checkpoint)
    inputs = images(BATCH, seed=19)
    expected = checkpoint_logits(checkpoint, inputs)
    with torch.no_grad():
        model = build_model("resnet18", len(MULTICLASS.classes), False, 0.0, "gem")
        model.load_state_dict(saved["state_dict"])
        model.get_parameter("avgpool.p").fill_(3.0)
        at_three = model.eval()(inputs).numpy()
    assert np.abs(expected - at_three).max() > 1e-3  # the saved p, not the initial one, is used
    out = tmp_path / "export"
    assert main(["export", "--model", str(checkpoint), "--out", str(out)]) == 0
    for logits in exported_logits(out, inputs):
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
