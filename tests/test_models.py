"""Tests of pipeline.models: head dropout on every supported architecture, the same head layout
for pretrained and scratch builds, and backbone freezing."""

from __future__ import annotations

import itertools
from typing import get_args

import pytest
import torch
from conftest import REPO, SHARED_WEIGHTS
from torch import nn

from pipeline.errors import ApexLoopError
from pipeline.models import FEATURE_MAPS, GeM, build_model, freeze_backbone, freeze_modules
from pipeline.params import TrainParams, load_section

ARCHITECTURES = get_args(TrainParams.model_fields["model"].annotation)


def _head_and_dropout(model: nn.Module) -> tuple[nn.Linear, nn.Dropout]:
    """The last Linear and the module that runs right before it."""
    ordered = [m for m in model.modules() if not list(m.children())]  # leaves, in order
    last = max(i for i, m in enumerate(ordered) if isinstance(m, nn.Linear))
    head, before = ordered[last], ordered[last - 1]
    assert isinstance(head, nn.Linear) and isinstance(before, nn.Dropout), (head, before)
    return head, before


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_every_architecture_gets_the_head_dropout_asked_for(name: str) -> None:
    model = build_model(name, 3, pretrained=False, dropout=0.35)
    head, dropout = _head_and_dropout(model)
    assert head.out_features == 3
    assert dropout.p == 0.35
    assert sum(isinstance(m, nn.Dropout) and m.p == 0.35 for m in model.modules()) == 1
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.skipif(not SHARED_WEIGHTS.is_dir(), reason="../shared/weights not present")
def test_a_pretrained_checkpoint_loads_into_a_scratch_build(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # evaluate rebuilds the trained model without weights and loads the checkpoint into it
    monkeypatch.setenv("TORCH_HOME", str(SHARED_WEIGHTS))
    trained = build_model("mobilenet_v2", 4, pretrained=True, dropout=0.5)
    scratch = build_model("mobilenet_v2", 4, pretrained=False, dropout=0.0)
    scratch.load_state_dict(trained.state_dict())  # strict: same keys and shapes
    assert _head_and_dropout(trained)[1].p == 0.5


def test_freezing_stops_the_input_end_of_the_backbone_and_never_the_head() -> None:
    model = build_model("resnet18", 2, pretrained=False, dropout=0.0)
    head = _head_and_dropout(model)[0]
    backbone = [p for p in model.parameters() if all(p is not q for q in head.parameters())]
    assert freeze_backbone(model, 0.5) == len(backbone) // 2
    flags = [p.requires_grad for p in backbone]
    assert flags == [False] * (len(backbone) // 2) + [True] * (len(backbone) - len(backbone) // 2)
    assert all(p.requires_grad for p in head.parameters())
    assert freeze_backbone(model, 1.0) == len(backbone)
    assert all(p.requires_grad for p in head.parameters())


def test_a_training_step_leaves_frozen_weights_unchanged() -> None:
    torch.manual_seed(0)  # weight init draws from torch's global RNG
    model = build_model("resnet18", 2, pretrained=False, dropout=0.0)
    freeze_backbone(model, 0.5)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.1, weight_decay=0.1)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    nn.CrossEntropyLoss()(model(images), torch.tensor([0, 1, 0, 1])).backward()
    optimizer.step()
    for name, parameter in model.named_parameters():
        changed = not torch.equal(parameter, before[name])
        assert changed == parameter.requires_grad, name


def test_named_stages_freeze_exactly_their_parameters() -> None:
    model = build_model("resnet18", 2, pretrained=False, dropout=0.0)
    named = [*model.conv1.parameters(), *model.layer1.parameters()]
    assert freeze_modules(model, ["conv1", "layer1"]) == len(named)
    for parameter in model.parameters():
        assert parameter.requires_grad != any(parameter is p for p in named)
    mobile = build_model("mobilenet_v2", 2, pretrained=False, dropout=0.0)
    assert freeze_modules(mobile, ["features.0"]) == len(list(mobile.features[0].parameters()))
    assert mobile.features[1].conv[0][0].weight.requires_grad


@pytest.mark.parametrize(
    ("name", "stage", "message"),
    [
        ("resnet18", "layer9", r"does not have; its stages are: conv1, bn1, relu, maxpool, layer1"),
        ("resnet18", "fc", r"'fc' holds the classifier head"),
        ("mobilenet_v2", "classifier", r"'classifier' holds the classifier head"),
    ],
)
def test_freezing_an_unknown_stage_or_the_head_is_refused(
    name: str, stage: str, message: str
) -> None:
    model = build_model(name, 2, pretrained=False, dropout=0.0)
    with pytest.raises(ApexLoopError, match=message):
        freeze_modules(model, [stage])


def test_freezing_random_weights_is_refused() -> None:
    params = load_section(REPO / "params.yaml", "train", TrainParams).model_dump()
    with pytest.raises(ValueError, match=r"train\.pretrained: true or train\.freeze_fraction: 0"):
        TrainParams.model_validate({**params, "pretrained": False, "freeze_fraction": 0.5})
    with pytest.raises(ValueError, match=r"train\.pretrained: true or train\.freeze_stages: \[\]"):
        TrainParams.model_validate({**params, "pretrained": False, "freeze_stages": ["layer1"]})


def _pooled(pool: str, features: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """What the classifier should receive: `features` (B, C, h, w) pooled by hand."""
    if pool == "avg":
        return features.mean(dim=(2, 3))
    if pool == "max":
        return features.amax(dim=(2, 3))
    p = next(m.p for m in model.modules() if isinstance(m, GeM))
    return features.clamp_min(1e-6).pow(p).mean(dim=(2, 3)).pow(1 / p)


@pytest.mark.parametrize("pool", ["avg", "gem", "max"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_the_classifier_sees_the_last_feature_map_pooled_as_asked(name: str, pool: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, 3, pretrained=False, dropout=0.0, pool=pool).eval()
    captured: list[torch.Tensor] = []
    feature_module = model.get_submodule(FEATURE_MAPS[name][32][0])
    feature_module.register_forward_hook(lambda _m, _i, out: captured.append(out))
    head_name = "fc" if name == "resnet18" else "classifier"
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 96, 96))
        expected = model.get_submodule(head_name)(_pooled(pool, captured[0], model))
    assert captured[0].shape[-1] == 3  # 96 px / 32: several cells, so the pools differ
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_gem_spans_the_average_and_the_maximum_and_learns_its_power() -> None:
    x = torch.rand(2, 4, 5, 5)
    gem = GeM()
    pooled = []
    for p in (1.0, 3.0, 10.0, 60.0):
        gem.p.data.fill_(p)
        pooled.append(gem(x).flatten(1).detach())
    torch.testing.assert_close(pooled[0], x.mean(dim=(2, 3)))
    top = x.amax(dim=(2, 3))
    assert all(bool((low <= high + 1e-6).all()) for low, high in itertools.pairwise(pooled))
    assert bool((pooled[-1] <= top + 1e-6).all())
    assert bool((pooled[-1] >= top * 25 ** (-1 / 60) - 1e-6).all())  # max x 25 cells**(-1/p)
    gem(x).sum().backward()
    assert gem.p.grad is not None and gem.p.grad.abs() > 0
