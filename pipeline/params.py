"""Typed, validated params: one frozen pydantic model per params.yaml section.

Every key lives in params.yaml (no code defaults), unknown keys are rejected, and a bad value
is reported with its dotted key and the allowed values or range, so a typo in
`dvc exp run -S train.lrr=0.1` stops the stage instead of being silently ignored.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from pipeline.errors import ApexLoopError

Task = Literal["multiclass", "multilabel"]
Tta = Literal["none", "hflip", "vflip", "flips"]  # test-time flips whose scores are averaged


class ParamsError(ApexLoopError):
    """params.yaml is missing, malformed, or has a bad key or value."""


_COMMAND_SAFE = re.compile(r"[\w./][\w./+-]*")  # no spaces, quotes, shell characters, leading '-'


def _command_safe(value: str) -> str:
    if not _COMMAND_SAFE.fullmatch(value):
        raise ValueError(
            "dvc.yaml puts this path into stage commands, which DVC runs through a shell: use "
            "only letters, digits, '.', '_', '+', '-' and '/' (no spaces or shell characters, "
            "not starting with '-')"
        )
    return value


# A params value that dvc.yaml renders into a command (`${ingest.root}`, `${clean.overrides}`).
CommandPath = Annotated[str, AfterValidator(_command_safe)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class IngestParams(_Section):
    """Where the images and their labels come from (sources a-d of the ingest stage)."""

    root: CommandPath = Field(description="dataset folder; every input lies inside it")
    task: Task
    good_class: str = Field(min_length=1)
    classes: list[str] | None = Field(description="expected class names; null: infer")
    source: Literal["folders", "table", "voc"]
    images: str = Field(min_length=1, description="image folder under root")
    table: str | None = Field(description="annotation table (csv/parquet) under root")
    voc: str | None = Field(description="folder of Pascal VOC XML files under root")
    masks: str | None = Field(description="mask folder under root mirroring the images")
    path_column: str
    label_column: str
    group_column: str | None
    boxes_column: str | None
    label_separator: str = Field(min_length=1)
    mask_threshold: int = Field(ge=0, le=254)
    mask_min_area: int = Field(ge=1)
    max_pixels: int = Field(ge=1)
    extensions: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_source(self) -> IngestParams:
        if self.source == "table" and not self.table:
            raise ValueError("source 'table' needs ingest.table (annotation CSV or parquet)")
        if self.source == "voc" and not self.voc:
            raise ValueError("source 'voc' needs ingest.voc (folder of Pascal VOC XML files)")
        if self.classes is not None:
            if len(set(self.classes)) != len(self.classes):
                raise ValueError(f"ingest.classes has repeated names: {self.classes}")
            if self.good_class not in self.classes:
                raise ValueError(
                    f"ingest.good_class {self.good_class!r} is not in ingest.classes {self.classes}"
                )
        return self


CheckAction = Literal["remove", "flag", "off"]


class LabelIssueParams(_Section):
    """Cleanlab label issues from K-fold out-of-sample probabilities on image embeddings."""

    embedding: Literal["auto", "mobilenet_v2", "thumbnail"]
    embedding_size: int = Field(ge=32, le=512)
    folds: int = Field(ge=2, le=20)
    classifier: Literal["logreg", "knn"]
    filter_by: Literal[
        "prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given"
    ]
    prob_threshold_correct: float = Field(ge=0, le=1)
    prob_threshold_wrong: float = Field(ge=0, le=1)
    seed: int = Field(ge=0)


class CleanActions(_Section):
    """Per issue type: remove the image, flag it (kept, marked), or switch the check off."""

    exact_duplicate: Literal["remove", "flag"]
    near_duplicate: CheckAction
    conflicting_label: Literal["remove", "flag"]
    blur: CheckAction
    dark: CheckAction
    light: CheckAction
    odd_size: CheckAction
    label: Literal["remove", "flag", "relabel", "off"]


class CleanParams(_Section):
    """Thresholds and actions of the data-quality gate (unreadable images are always removed)."""

    workers: int = Field(ge=1, le=256, description="processes decoding and hashing images")
    working_size: int = Field(ge=0, description="longest side for blur/brightness; 0 = native")
    hash: Literal["phash", "dhash", "whash", "ahash"]
    near_duplicate_max_distance: int = Field(ge=0, le=16, description="Hamming bits of 64")
    near_duplicate_min_correlation: float = Field(
        ge=0, le=1, description="texture phase correlation confirming a hash match; 0 = off"
    )
    blur_absolute: float = Field(ge=0, description="Laplacian variance below this is blurry")
    blur_relative: float = Field(ge=0, le=1, description="... or below this x class median")
    dark_threshold: float = Field(gt=0, le=1)
    light_threshold: float = Field(gt=0, le=1)
    odd_size_min_side: int = Field(ge=1)
    odd_size_threshold: float = Field(gt=0, le=1)
    label_issues: LabelIssueParams
    actions: CleanActions
    overrides: CommandPath = Field(description="review queue CSV whose decisions win")

    @model_validator(mode="after")
    def _check_working_size(self) -> CleanParams:
        if 0 < self.working_size < 32:
            raise ValueError(
                f"clean.working_size must be 0 (native) or at least 32 (got {self.working_size}): "
                "smaller images lose the texture the blur check measures"
            )
        return self


class SplitParams(_Section):
    """Group-aware, stratified train/val/test fractions, or K folds plus a held-out test side."""

    train: float = Field(gt=0, lt=1)
    val: float = Field(ge=0, lt=1)
    test: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0)
    min_groups_policy: Literal["error", "train_only"]
    folds: int = Field(ge=0, le=20)
    fold: int = Field(ge=0)

    @model_validator(mode="after")
    def _check_sum(self) -> SplitParams:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"split.train + split.val + split.test must be 1 (got {total:g})")
        if self.folds == 1:
            raise ValueError("split.folds must be 0 (off) or at least 2")
        if self.folds and self.val != 0:
            raise ValueError(
                "with split.folds the validation side is fold split.fold of the non-test rows: "
                f"set split.val to 0 and split.train to {1 - self.test:g}"
            )
        if self.fold >= max(self.folds, 1):
            raise ValueError(f"split.fold must be below split.folds ({self.folds}), or 0")
        return self


class TrainParams(_Section):
    """Model and optimisation settings."""

    model: Literal[
        "mobilenet_v3_small", "mobilenet_v3_large", "mobilenet_v2", "resnet18", "efficientnet_b0"
    ]
    pretrained: bool
    image_size: int = Field(ge=16, le=1024)
    epochs: int = Field(ge=1, le=1000)
    batch_size: int = Field(ge=2, le=4096)  # batch norm cannot train on batches of one
    lr: float = Field(gt=0, le=10)
    weight_decay: float = Field(ge=0, le=1)
    hflip: bool
    device: Literal["auto", "cpu", "cuda"]
    amp: Literal["auto", "bf16", "fp16", "off"]  # CUDA mixed precision; CPU trains in float32
    seed: int = Field(ge=0)
    monitor: Literal["macro_f1", "miss_rate"]  # validation metric that picks the best epoch
    patience: int = Field(ge=0, le=1000)  # early stop after this many epochs without gain
    dropout: float = Field(ge=0, le=0.9)  # before the classifier head
    pool: Literal["avg", "gem", "max"]  # global pooling of the last feature map
    freeze_fraction: float = Field(ge=0, le=1)  # of the pretrained backbone, input end first
    freeze_stages: list[str]  # named backbone modules to freeze, e.g. [conv1, layer1]
    # data: decode once into a uint8 cache; train-time augmentation (pipeline/transforms.py)
    decode_cache: Literal["memory", "disk"]  # disk: memory-mapped file under the cache folder
    # DataLoader worker processes; 0 = in the main one; auto: training.loader_workers
    num_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"]
    vflip: bool
    rotate_degrees: float = Field(ge=0, le=180)
    crop_scale_min: float = Field(gt=0, le=1)  # RandomResizedCrop's smallest area share; 1 = off
    relabel_hidden: bool  # a defect whose boxes augmentation moved out of view no longer counts
    color_jitter: float = Field(ge=0, le=1)  # brightness/contrast/saturation strength; 0 = off
    # per image in the DataLoader (Pillow) or per batch on the training device (tensor ops)
    augment_on: Literal["auto", "loader", "device"]  # auto: device on CUDA, loader on CPU
    # batch mixing (pipeline/mixing.py)
    mix: Literal["none", "mixup", "cutmix", "defect_cutmix"]
    mix_prob: float = Field(ge=0, le=1)  # share of batches that are mixed
    mix_alpha: float = Field(gt=0, le=10)  # Beta(alpha, alpha) draw of the mixing ratio
    cutmix_min_ratio: float = Field(ge=0, le=1)  # pasted patch's share of the image area
    cutmix_max_ratio: float = Field(gt=0, le=1)
    defect_max_cover: float = Field(ge=0, le=1)  # defect_cutmix: most of any defect box covered
    defect_min_visible: float = Field(gt=0, le=1)  # a pasted defect counts from this box share
    # share of good images given a defect cut from another image of their batch (needs boxes)
    defect_paste: float = Field(ge=0, le=1)  # pipeline/defect_paste.py; 0 = off
    # optimisation
    optimizer: Literal["adamw", "sgd"]
    momentum: float = Field(ge=0, lt=1)  # sgd only (Nesterov)
    schedule: Literal["cosine", "onecycle"]
    warmup_epochs: float = Field(ge=0, le=100)  # linear warm-up (onecycle: its rising phase)
    grad_clip: float = Field(ge=0, le=1000)  # max gradient norm; 0 = off
    ema_decay: float = Field(ge=0, lt=1)  # exponential moving average of weights; 0 = off
    ensemble: int = Field(ge=1, le=32)  # members trained with seeds seed, seed + 1, ...; averaged
    # [] (members alike) or one mapping per member of the train keys it trains with instead
    member_overrides: list[dict[str, Any]]
    # class imbalance (pipeline/samplers.py, pipeline/losses.py)
    sampler: Literal["none", "weighted"]
    sampler_mode: Literal["inv", "sqrt", "effective_num"]
    sampler_beta: float = Field(ge=0, lt=1)
    upsample_target_ratio: float = Field(ge=0, le=1)
    upsample_max_replications: int = Field(ge=1, le=1000)
    loss: Literal["ce", "focal"]
    focal_gamma: float = Field(ge=0, le=10)
    focal_alpha: list[float] | None
    label_smoothing: float = Field(ge=0, lt=1)
    class_weight_damping: float = Field(ge=0, le=1)
    # localisation (pipeline/models.py DefectMap): weight of the defect-map loss; 0 = off
    defect_map_weight: float = Field(ge=0, le=100)
    defect_map_cell: Literal[16, 32]  # px per map cell: the last feature map (32) or finer (16)

    @model_validator(mode="after")
    def _check_freezing(self) -> TrainParams:
        if self.freeze_fraction > 0 and not self.pretrained:
            raise ValueError(
                "train.freeze_fraction > 0 freezes random weights when train.pretrained is "
                "false: set train.pretrained: true or train.freeze_fraction: 0"
            )
        if self.freeze_stages and not self.pretrained:
            raise ValueError(
                "train.freeze_stages freezes random weights when train.pretrained is false: "
                "set train.pretrained: true or train.freeze_stages: []"
            )
        if self.cutmix_min_ratio > self.cutmix_max_ratio:
            raise ValueError(
                f"train.cutmix_min_ratio ({self.cutmix_min_ratio}) is above "
                f"train.cutmix_max_ratio ({self.cutmix_max_ratio})"
            )
        if self.warmup_epochs and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"train.warmup_epochs ({self.warmup_epochs}) must be below train.epochs "
                f"({self.epochs})"
            )
        return self

    @model_validator(mode="after")
    def _check_members(self) -> TrainParams:
        if not self.member_overrides:
            return self
        if len(self.member_overrides) != self.ensemble:
            raise ValueError(
                f"train.member_overrides has {len(self.member_overrides)} entries for "
                f"train.ensemble {self.ensemble} members: give one mapping per member ({{}} for "
                "a member with the shared settings), or [] for members alike"
            )
        for k in range(self.ensemble):
            self.member(k)  # each member's settings are valid train params
        return self

    def member(self, k: int) -> TrainParams:
        """What ensemble member k trains with: these params with seed + k, changed by its
        entry of member_overrides (which may set its seed too)."""
        where = f"train.member_overrides[{k}]"
        changes = self.member_overrides[k] if self.member_overrides else {}
        shared = sorted(set(changes) & set(MEMBERS_SHARE))
        if shared:
            raise ValueError(
                f"{where} sets {shared}: every member shares {', '.join(MEMBERS_SHARE)} "
                "(one saved model of one input size; members' epochs laid end to end)"
            )
        settings = {
            **self.model_dump(),
            "seed": self.seed + k,
            **changes,
            "member_overrides": [],
        }
        try:
            return TrainParams.model_validate(settings)
        except ValidationError as exc:
            lines = [_describe(dict(err), TrainParams, where) for err in exc.errors()]
            raise ValueError("\n  ".join(lines)) from None


# Train keys an ensemble member cannot change: the saved model's shape and input, the members'
# shared epoch axis, the ensemble itself, and where the run happens.
MEMBERS_SHARE = (
    "model",
    "image_size",
    "pool",
    "epochs",
    "ensemble",
    "member_overrides",
    "device",
    "amp",
    "num_workers",
    "decode_cache",
)


class EvaluateParams(_Section):
    """How predictions are turned into decisions, the operating point and metrics."""

    batch_size: int = Field(ge=1, le=4096)
    multilabel_threshold: float = Field(gt=0, lt=1)
    max_miss_rate: float = Field(ge=0, lt=1)
    multilabel_rule: Literal["f1", "recall"]
    multilabel_min_recall: float = Field(gt=0, le=1)
    bootstrap_resamples: int = Field(ge=0, le=100_000)
    min_class_accuracy: float = Field(ge=0, le=1)
    seed: int
    tta: Tta


class Params(_Section):
    """The stage sections of params.yaml, one per DVC stage."""

    ingest: IngestParams
    clean: CleanParams
    split: SplitParams
    train: TrainParams
    evaluate: EvaluateParams


class FlowParams(_Section):
    """How the Prefect flow (pipeline/flows.py) runs the stages, and its promotion gate. No DVC
    stage lists this section, so changing it never re-runs a stage."""

    task_runner: Literal["thread", "process", "dask", "ray"]  # where clean's image chunks run
    workers: int = Field(ge=1, le=256)  # threads/processes; dask/ray: size of a local cluster
    cluster_address: str | None  # dask scheduler or ray address; null: a local cluster
    retries: int = Field(ge=0, le=20)  # ingest and clean, on I/O errors (OSError)
    retry_delay_seconds: float = Field(ge=0, le=3600)  # first delay; doubles at each retry
    production_dir: str = Field(min_length=1)  # the promoted model, thresholds, metrics, record
    promote_max_miss_rate: float = Field(ge=0, le=1)  # highest test miss rate (operating point)
    promote_f1_tolerance: float = Field(ge=0, le=1)  # test macro-F1 drop allowed vs production


# Sections that configure how the pipeline is run, not a stage: allowed beside Params' sections.
RUN_SECTIONS: dict[str, type[BaseModel]] = {"flow": FlowParams}


SectionT = TypeVar("SectionT", bound=BaseModel)


def _range_of(model: type[BaseModel], name: str) -> str:
    """Human text for a field's numeric bounds or allowed literals, e.g. '0 < value <= 10'."""
    field = model.model_fields.get(name)
    if field is None:
        return ""
    lower = upper = ""
    for item in field.metadata:
        for attr, text in (("gt", "{} < "), ("ge", "{} <= ")):
            if getattr(item, attr, None) is not None:
                lower = text.format(getattr(item, attr))
        for attr, text in (("lt", " < {}"), ("le", " <= {}")):
            if getattr(item, attr, None) is not None:
                upper = text.format(getattr(item, attr))
    if lower or upper:
        return f"allowed: {lower}value{upper}"
    return ""


def _describe(error: dict[str, Any], model: type[BaseModel], prefix: str) -> str:
    loc = [str(part) for part in error["loc"]]
    key = ".".join([prefix, *loc]) if loc else prefix
    owner = model
    for part in loc[:-1]:
        sub = owner.model_fields.get(part)
        if sub is None or not isinstance(sub.annotation, type):
            break
        if issubclass(sub.annotation, BaseModel):
            owner = sub.annotation
    if error["type"] == "extra_forbidden":
        valid = ", ".join(owner.model_fields)
        close = difflib.get_close_matches(loc[-1], list(owner.model_fields), n=1)
        meant = f" (did you mean '{'.'.join([prefix, *loc[:-1], close[0]])}'?)" if close else ""
        return f"unknown key '{key}'{meant}. Valid keys here: {valid}"
    if error["type"] == "missing":
        return f"missing key '{key}': add it to params.yaml"
    if not loc and error["type"] == "value_error":  # a check across keys, which it names
        return f"{key}: {error['msg'].removeprefix('Value error, ')}"
    bounds = _range_of(owner, loc[-1]) if loc else ""
    got = error.get("input")
    text = f"bad value for '{key}' (got {got!r}): {error['msg']}"
    return f"{text}; {bounds}" if bounds else text


def validate_section(model: type[SectionT], data: Any, name: str, source: str) -> SectionT:
    """Validate one section, turning pydantic's report into a ParamsError naming each key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [_describe(dict(err), model, name) for err in exc.errors()]
        raise ParamsError(f"{source}: invalid params:\n  " + "\n  ".join(lines)) from None


def read_params_file(path: Path) -> dict[str, Any]:
    """Read params.yaml as a mapping, with a clear error if it is missing or malformed."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: params file not found") from None
    except yaml.YAMLError as exc:
        raise ParamsError(
            f"{path}: not valid YAML; fix the syntax at the line and column shown:\n{exc}"
        ) from None
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(data).__name__}")
    return data


def load_section(path: Path, name: str, model: type[SectionT]) -> SectionT:
    """Load and validate one section (a stage validates only what it uses)."""
    data = read_params_file(path)
    if name not in data:
        raise ParamsError(
            f"{path}: missing section '{name}' (sections: {', '.join(data)}); add it, e.g. "
            "from the repository's params.yaml"
        )
    return validate_section(model, data[name], name, str(path))


def load_params(path: Path) -> Params:
    """Load and validate the whole params file: every stage section, and the run sections
    (`flow`) that are present (they are returned by `load_section`, not in Params)."""
    data = read_params_file(path)
    known = [*Params.model_fields, *RUN_SECTIONS]
    extra = sorted(set(data) - set(known))
    if extra:
        raise ParamsError(f"{path}: unknown section(s) {extra}. Valid sections: {', '.join(known)}")
    for name, model in RUN_SECTIONS.items():
        if name in data:
            validate_section(model, data[name], name, str(path))
    missing = [name for name in Params.model_fields if name not in data]
    if missing:
        raise ParamsError(f"{path}: missing section(s) {missing}")
    sections = {
        name: validate_section(field.annotation, data[name], name, str(path))  # type: ignore[arg-type]
        for name, field in Params.model_fields.items()
    }
    return Params.model_validate(sections)
