"""torchvision classifiers with an output head sized to the task, and offline-only weights."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchvision import models

from pipeline.errors import ApexLoopError

# ImageNet statistics; every supported backbone's weights were trained with them.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class WeightsMissingError(ApexLoopError):
    """Pretrained weights were asked for but are not in the local torch hub cache."""


def _cache_path(weights: Any) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def cached_weights(name: str) -> Any:
    """The torchvision ImageNet weights for `name` whose file is in the local hub cache.

    The default (best) weights are preferred; any other published set that is cached is used
    otherwise. Never downloads: with none cached, the error names the file and where to put it.
    """
    enum = models.get_model_weights(name)
    candidates = [enum.DEFAULT, *(w for w in enum if w is not enum.DEFAULT)]
    for weights in candidates:
        if _cache_path(weights).is_file():
            return weights
    path = _cache_path(enum.DEFAULT)
    others = ", ".join(Path(w.url).name for w in candidates[1:])
    raise WeightsMissingError(
        f"pretrained weights for {name} not found at {path}"
        + (f" (nor {others})" if others else "")
        + f". Put {path.name} there, or set TORCH_HOME to a folder holding "
        f"hub/checkpoints/{path.name} (e.g. TORCH_HOME=../shared/weights), "
        "or set train.pretrained: false"
    )


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """(parent module, attribute name, layer) of the classifier's last Linear layer."""
    name, last = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    parent_name, _, attr = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), attr, last


def _set_head(model: nn.Module, head: nn.Linear, dropout: float) -> None:
    """Install `head` as the last Linear with dropout `dropout` right before it: the
    architecture's own head dropout (MobileNet, EfficientNet) gets that rate; where there is
    none (ResNet) the head becomes Dropout + Linear."""
    parent, attr, _ = _last_linear(model)
    if isinstance(parent, nn.Sequential) and attr.isdigit() and int(attr) > 0:
        before = parent[int(attr) - 1]
        if isinstance(before, nn.Dropout):
            before.p = dropout
            parent[int(attr)] = head
            return
    setattr(parent, attr, nn.Sequential(nn.Dropout(dropout), head))


class GeM(nn.Module):
    """Generalised-mean pooling to (B, C, 1, 1): the mean over the cells of x**p, to the power
    1/p, with p learnt from 3 (p = 1 is the average, a large p the maximum). A defect that
    lights one cell of 49 still moves the pooled feature, where the average dilutes it."""

    def __init__(self, p: float = 3.0) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        powered = x.float().clamp_min(1e-6).pow(self.p)  # float32: x**p overflows fp16
        return F.adaptive_avg_pool2d(powered, 1).pow(1.0 / self.p).to(x.dtype)


def _set_pool(model: nn.Module, pool: str) -> None:
    """Pool the last feature map by `pool` (avg: torchvision's own; gem: `GeM`; max): the
    pool replaces the architecture's `avgpool`; MobileNetV2, which averages inside its
    forward, gets it as the last module of `features` (the average of its 1 x 1 output is
    then that output)."""
    if pool == "avg":
        return
    layer = GeM() if pool == "gem" else nn.AdaptiveMaxPool2d(1)
    if isinstance(getattr(model, "avgpool", None), nn.AdaptiveAvgPool2d):
        model.avgpool = layer
    else:
        features = model.get_submodule("features")
        assert isinstance(features, nn.Sequential), type(features)
        features.append(layer)


def build_model(
    name: str, num_outputs: int, pretrained: bool, dropout: float, pool: str = "avg"
) -> nn.Module:
    """A torchvision classifier by name with `num_outputs` outputs, head dropout `dropout`
    and global pooling `pool` (see `_set_pool`); pretrained backbones (from the local hub cache
    only) get a fresh head."""
    if not pretrained:
        model = models.get_model(name, weights=None, num_classes=num_outputs)
        _set_head(model, _last_linear(model)[2], dropout)  # keeps torchvision's head init
    else:
        model = models.get_model(name, weights=cached_weights(name))
        _set_head(model, nn.Linear(_last_linear(model)[2].in_features, num_outputs), dropout)
    _set_pool(model, pool)
    return model


# (module, channels) of each architecture's last feature map with cells of 32 px (the one
# the classifier pools) and of 16 px (the last before the final downsampling); MobileNetV2's
# is its last block, since `features` itself ends in the pool when train.pool is not avg
FEATURE_MAPS = {
    "resnet18": {32: ("layer4", 512), 16: ("layer3", 256)},
    "mobilenet_v2": {32: ("features.18", 1280), 16: ("features.13", 96)},
    "mobilenet_v3_small": {32: ("features", 576), 16: ("features.8", 48)},
    "mobilenet_v3_large": {32: ("features", 960), 16: ("features.12", 112)},
    "efficientnet_b0": {32: ("features", 1280), 16: ("features.5", 112)},
}
DEFECT_MAP = "defect_map"  # the DefectMap's name inside a model


class DefectMap(nn.Module):
    """Scores each cell of a backbone feature map for a defect (a 1x1 convolution):
    trained beside the classifier against the defect boxes (train.defect_map_weight), it
    teaches the features that the classifier pools where small defects are. A forward hook on
    the feature module hands it the map in training mode only; it is left out of the saved
    model (`without_defect_map`), so inference and export never see it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        # a separate bias: a Conv2d bias would draw one more number from the global RNG, and
        # every seeded run with the map (the README's figures) would train differently
        self.conv = nn.Conv2d(channels, 1, 1, bias=False)
        self.bias = nn.Parameter(torch.tensor(-2.0))  # starts near the share of defect cells
        nn.init.zeros_(self.conv.weight)  # ... the same for every cell
        self.logits: torch.Tensor | None = None

    def capture(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if module.training:
            self.logits = self.conv(output) + self.bias

    def take(self) -> torch.Tensor:
        """The logits (B, 1, h, w) of the last training-mode forward pass, handed over once."""
        logits, self.logits = self.logits, None
        if logits is None:
            raise RuntimeError("no defect map: the model has not run forward in training mode")
        return logits


def add_defect_map(model: nn.Module, name: str, cell: int = 32) -> DefectMap:
    """Attach a DefectMap to a `build_model` model of architecture `name`, scoring the
    feature map whose cells are `cell` px (32 or 16, see FEATURE_MAPS)."""
    module, channels = FEATURE_MAPS[name][cell]
    head = DefectMap(channels)
    model.add_module(DEFECT_MAP, head)
    model.get_submodule(module).register_forward_hook(head.capture)
    return head


def without_defect_map(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict without the DefectMap's tensors: the classifier alone."""
    return {key: value for key, value in state.items() if not key.startswith(f"{DEFECT_MAP}.")}


class Ensemble(nn.Module):
    """Several trained members as one model whose outputs are logits of the members' mean
    scores: multiclass, the log of the mean softmax (its softmax is that mean); multilabel,
    the logit of the mean sigmoid, taken in log space so that it stays finite. Inference,
    test-time flips, evaluation and export then treat it as any other classifier."""

    def __init__(self, members: Sequence[nn.Module], task: str) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.multilabel = task == "multilabel"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([member(x) for member in self.members]).float()  # (M, B, K)
        if self.multilabel:  # log p - log(1 - p), p the mean sigmoid
            positive = torch.logsumexp(nn.functional.logsigmoid(logits), dim=0)
            return positive - torch.logsumexp(nn.functional.logsigmoid(-logits), dim=0)
        mean = torch.logsumexp(torch.log_softmax(logits, dim=-1), dim=0)
        return mean - math.log(len(self.members))


def freeze_backbone(model: nn.Module, fraction: float) -> int:
    """Stop gradients for the first `fraction` of the backbone's parameter tensors (every
    tensor but the head's, in definition order: the input end first). Batch-norm statistics
    of frozen layers still adapt in train mode. Returns the number of tensors frozen."""
    head = {id(p) for p in _last_linear(model)[2].parameters()}
    backbone = [p for p in model.parameters() if id(p) not in head]
    frozen = backbone[: math.floor(fraction * len(backbone))]
    for parameter in frozen:
        parameter.requires_grad_(False)
    return len(frozen)


def freeze_modules(model: nn.Module, names: Sequence[str]) -> int:
    """Stop gradients for every parameter of the named submodules (e.g. ResNet's "conv1",
    "layer1"; MobileNet's "features.0"). The head cannot be frozen; an unknown name is an
    error listing the model's top-level stages. Returns the number of tensors frozen."""
    modules = dict(model.named_modules())
    head_name = next(n for n, m in modules.items() if m is _last_linear(model)[2])
    stages = ", ".join(name for name, _ in model.named_children())
    frozen = 0
    for name in names:
        if name not in modules or not name:
            raise ApexLoopError(
                f"train.freeze_stages names {name!r}, which this model does not have; its "
                f"stages are: {stages} (sub-stages by dotted name, e.g. features.0)"
            )
        if head_name == name or head_name.startswith(f"{name}."):
            raise ApexLoopError(
                f"train.freeze_stages: {name!r} holds the classifier head, which must train"
            )
        for parameter in modules[name].parameters():
            frozen += parameter.requires_grad
            parameter.requires_grad_(False)
    return frozen


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move the model to `device` in channels_last layout (bench/train_throughput.py: 1.13x on
    this CPU for resnet18 at 64 px; more on GPUs)."""
    return model.to(device).to(memory_format=torch.channels_last)


def pick_device(setting: str) -> torch.device:
    """`auto`: CUDA when present, else CPU; `cuda` without a GPU is an error."""
    if setting == "cuda" and not torch.cuda.is_available():
        raise ApexLoopError("train.device is 'cuda' but no CUDA GPU is visible; use auto or cpu")
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)
