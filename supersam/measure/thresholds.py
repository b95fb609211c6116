"""mIoU thresholds: absolute (``0.8``), relative to the base model (``0.95x``, ``95%``) or a
margin over the trivial baselines (``baseline+0.05``).

docs/method.md, "Thresholds relative to the base model" and "The target rule".

A user compressing a model thinks "within 5% of my base model", not "mIoU 0.76".
``search.min_miou`` / ``--min-miou`` and ``train.target_miou`` therefore accept

* an absolute mIoU in [0, 1]: ``0.8``, ``"0.8"``;
* a factor of the base model's mIoU in (0, 1.5]: ``"0.95x"`` or ``"95%"``;
* a margin in [0, 1] over the best trivial baseline on the same objects:
  ``"baseline+0.05"`` (``"baseline"`` = ``"baseline+0"``). The baselines are
  :func:`supersam.measure.baselines.trivial_baselines` (all-foreground, and box fill
  for box prompts or the disk for point prompts) on the very validation sample the
  threshold is checked on, so the threshold needs no model: it says "segments
  better than the trivial predictor by this much" on any data set. It is the
  default target of the downstream run (params.yaml), where the base model is a
  generalist evaluated zero-shot and a factor of it would reward staying there.

The base model is the SAM the supernet was built from (the supernet meta's
``checkpoint``, i.e. the ``model.checkpoint`` setting). Its mIoU is measured on
the same validation sample, with the same metric, that the threshold is checked
on (:func:`resolve_threshold`). After sandwich training the supernet's max subnet
no longer equals the base model, so the base checkpoint itself is evaluated. A
supernet built from a randomly initialised SAM has no base model: a relative
threshold is then refused.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supersam.artifacts.records import SupernetMeta
from supersam.runtime.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

MAX_FACTOR = 1.5
_NUMBER = r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?"
_FORM = re.compile(rf"^({_NUMBER})\s*([x%]?)$", re.IGNORECASE)
_BASELINE_FORM = re.compile(rf"^baseline\s*(?:\+\s*({_NUMBER}))?$", re.IGNORECASE)
_EXAMPLES = (
    "an absolute mIoU in [0, 1] like 0.8, a factor of the base model's mIoU in (0, 1.5] like 0.95x or 95%, "
    "or a margin in [0, 1] over the best trivial baseline like baseline+0.05"
)


@dataclass(frozen=True)
class MiouThreshold:
    """An mIoU threshold: absolute, a factor of the base model's mIoU, or a margin over the baselines.

    Attributes:
        value: the absolute mIoU, the factor (``relative``) or the margin (``over_baseline``).
        relative: whether ``value`` multiplies the base model's mIoU.
        over_baseline: whether ``value`` is added to the best trivial baseline's mIoU.
    """

    value: float
    relative: bool = False
    over_baseline: bool = False

    @classmethod
    def parse(cls, setting: Any, what: str = "mIoU threshold") -> MiouThreshold:
        """Parse ``0.8``, ``"0.8"`` (absolute), ``"0.95x"`` or ``"95%"`` (relative 0.95),
        ``"baseline+0.05"`` (margin 0.05 over the best trivial baseline).

        Args:
            setting: a number or a string (case and surrounding blanks ignored).
            what: the setting's name for the error message, e.g. ``search.min_miou``.

        Raises:
            ConfigError: one line naming ``what``, the value and valid examples.
        """
        if isinstance(setting, cls):
            return setting
        if isinstance(setting, bool) or not isinstance(setting, (int, float, str)):
            raise ConfigError(f"{what} is {setting!r}; use {_EXAMPLES}")
        if isinstance(setting, str) and setting.strip().lower().startswith("baseline"):
            match = _BASELINE_FORM.match(setting.strip())
            margin = float(match.group(1) or 0.0) if match else math.nan
            if not 0.0 <= margin <= 1.0:  # NaN too
                raise ConfigError(f"{what} is {setting!r}; use {_EXAMPLES}")
            return cls(margin, over_baseline=True)
        if isinstance(setting, str):
            match = _FORM.match(setting.strip())
            if not match:
                raise ConfigError(f"{what} is {setting!r}; use {_EXAMPLES}")
            number, suffix = float(match.group(1)), match.group(2).lower()
            relative = bool(suffix)
            value = number / 100.0 if suffix == "%" else number
        else:
            value, relative = float(setting), False
        if not math.isfinite(value):
            raise ConfigError(f"{what} is {setting!r}; use {_EXAMPLES}")
        if relative and not 0.0 < value <= MAX_FACTOR:
            raise ConfigError(f"{what} is {setting!r}, a factor outside (0, {MAX_FACTOR:g}]; use {_EXAMPLES}")
        if not relative and not 0.0 <= value <= 1.0:
            raise ConfigError(f"{what} is {setting!r}, an absolute mIoU outside [0, 1]; use {_EXAMPLES}")
        return cls(value, relative)

    def resolve(self, base_miou: float | None = None, baseline_miou: float | None = None) -> float:
        """The absolute mIoU: ``value``, ``value * base_miou`` when relative, or
        ``baseline_miou + value`` over the baselines.

        Raises:
            ValueError: a relative threshold without ``base_miou``, or one over the baselines
                without ``baseline_miou``.
        """
        if self.over_baseline:
            if baseline_miou is None:
                raise ValueError(f"the threshold {self} needs the best trivial baseline's mIoU")
            return float(baseline_miou) + self.value
        if not self.relative:
            return self.value
        if base_miou is None:
            raise ValueError(f"the relative threshold {self} needs the base model's mIoU")
        return self.value * float(base_miou)

    def __str__(self) -> str:
        text = format(self.value, ".12g")
        if self.over_baseline:
            return f"baseline+{text}"
        return f"{text}x" if self.relative else text


def setting_text(setting: Any) -> str:
    """A threshold setting as the string kept in configs, metrics and MLflow (``0.029`` -> ``"0.029"``)."""
    if isinstance(setting, str):
        return setting.strip()
    if isinstance(setting, float):
        return repr(setting)
    return str(setting)


@dataclass(frozen=True)
class ResolvedThreshold:
    """A threshold after resolution against the base model.

    Attributes:
        value: the absolute mIoU the constraint or target uses.
        setting: the setting as given (``"0.95x"``, ``"0.8"``, ``"baseline+0.05"``...).
        base_miou: the base model's mIoU when the setting is relative, else None.
        baseline_miou: the best trivial baseline's mIoU when the setting is a margin over it, else None.
        baseline: that baseline's name (``box_fill``, ``disk``, ``all_foreground``), else None.
    """

    value: float
    setting: str
    base_miou: float | None = None
    baseline_miou: float | None = None
    baseline: str | None = None

    def report(self, name: str, base_key: str | None = "base_miou") -> dict[str, Any]:
        """``{name: value, name_setting: setting}`` plus ``{base_key: base_miou}`` when relative,
        or ``{base_key with "base" -> "baseline": baseline_miou}`` over the baselines.

        For metrics.json and MLflow; ``base_key=None`` leaves the reference mIoU out.
        """
        out: dict[str, Any] = {name: self.value, f"{name}_setting": self.setting}
        if self.base_miou is not None and base_key:
            out[base_key] = self.base_miou
        if self.baseline_miou is not None and base_key:
            out[base_key.replace("base", "baseline", 1)] = self.baseline_miou
        return out

    def describe(self) -> str:
        """For log lines: ``0.7600``, ``0.7600 (0.95x of base 0.8000)`` or
        ``0.6600 (baseline+0.05: box fill 0.6100)``."""
        if self.baseline_miou is not None:
            name = (self.baseline or "baseline").replace("_", " ")
            return f"{self.value:.4f} ({self.setting}: {name} {self.baseline_miou:.4f})"
        if self.base_miou is None:
            return f"{self.value:.4f}"
        return f"{self.value:.4f} ({self.setting} of base {self.base_miou:.4f})"


def best_baseline(inputs: Sequence[Any]) -> tuple[str, float]:
    """The strongest trivial baseline on ``inputs``: its name and mIoU (in [0, 1]).

    The candidates are :func:`supersam.measure.baselines.trivial_baselines`'s
    (all-foreground, and box fill or the disk by the inputs' prompt kind).

    Raises:
        ConfigError: no objects in ``inputs`` (no baseline can be measured).
    """
    from supersam.measure.baselines import trivial_baselines

    finite = {k: v for k, v in trivial_baselines(inputs).items() if math.isfinite(v)}
    if not finite:
        raise ConfigError("a threshold over the trivial baselines needs validation objects, and the sample has none")
    name = max(finite, key=finite.get)
    return name, finite[name]


def base_checkpoint(
    threshold: MiouThreshold, meta: SupernetMeta, what: str, source: str = "the supernet"
) -> str | None:
    """The base model checkpoint a relative ``threshold`` is measured against (None when absolute).

    Args:
        threshold: the parsed threshold.
        meta: the supernet's metadata (``checkpoint`` = the base model's path, "" for random init).
        what: the setting's name for messages.
        source: the supernet's path for messages.

    Raises:
        ConfigError: relative threshold but the supernet comes from a randomly initialised SAM.
        CheckpointError: the recorded base checkpoint file is missing.
    """
    if not threshold.relative:
        return None
    path = meta.checkpoint
    if not path:
        raise ConfigError(
            f"{what} {threshold} is relative, but a relative threshold needs a base model checkpoint and "
            f"{source} was built from a randomly initialised SAM (model.checkpoint is empty); "
            f"set model.checkpoint and rebuild the supernet, or give an absolute mIoU like 0.8"
        )
    if not Path(path).exists():  # a checkpoint file or a Hugging Face model folder
        raise CheckpointError(
            f"{what} {threshold} is relative to the base model checkpoint {path} that {source} was built from, "
            f"but it does not exist (run from the project folder, or give an absolute mIoU like 0.8)"
        )
    return path


def measure_base_miou(
    meta: SupernetMeta, inputs: Sequence[Any], device: Any, metric: str = "miou", amp: bool = False, batch_size: int = 1
) -> float:
    """mIoU (``metric``) of the base model recorded in a supernet's ``meta`` on ``inputs``.

    The model is ``build_sam(meta.model_type, meta.img_size, meta.checkpoint)``
    evaluated by :func:`supersam.measure.scoring.run_eval` with its own prompt encoder.

    Raises:
        CheckpointError: unreadable base checkpoint, or one with other weights than the
            supernet was built from.
    """
    import torch

    from supersam.measure.scoring import run_eval
    from supersam.model.checkpoint import load_base_model

    device = torch.device(device)
    loaded = load_base_model(meta, "the supernet")
    model = loaded.model.to(device)
    try:
        result = run_eval(model, inputs, device, amp=amp, batch_size=batch_size)
    finally:
        del model, loaded
    return float(result[metric])


def resolve_threshold(
    setting: Any,
    meta: SupernetMeta,
    inputs: Sequence[Any],
    device: Any,
    *,
    what: str,
    source: str = "the supernet",
    metric: str = "miou",
    amp: bool = False,
    batch_size: int = 1,
) -> ResolvedThreshold:
    """Resolve a threshold setting to an absolute mIoU on the validation sample ``inputs``.

    An absolute setting is returned as is (nothing is evaluated). A relative one
    multiplies the base model's ``metric`` on ``inputs`` (:func:`measure_base_miou`).
    One over the baselines adds its margin to :func:`best_baseline` of ``inputs``.

    Args:
        setting: as given (``0.8``, ``"0.95x"``, ``"95%"``).
        meta: the supernet's metadata (``model_type``, ``img_size``, ``checkpoint``).
        inputs: the validation sample the threshold is checked on.
        device: evaluation device.
        what: the setting's name for messages (``search.min_miou``).
        source: the supernet's path for messages.
        metric: ``miou`` or ``miou_oracle``, as the threshold is checked.
        amp, batch_size: as for the threshold's own evaluations.

    Raises:
        ConfigError: invalid setting, relative without a base model checkpoint, or over the
            baselines with no objects in ``inputs``.
        CheckpointError: base checkpoint missing, unreadable, or with other weights than the
            supernet was built from.
    """
    threshold = MiouThreshold.parse(setting, what)
    text = setting_text(setting)
    if threshold.over_baseline:
        name, baseline = best_baseline(inputs)
        value = threshold.resolve(baseline_miou=baseline)
        log.info(
            "%s %s: the best trivial baseline on the %d validation images is %s with mIoU %.4f -> threshold %.4f",
            what,
            text,
            len(inputs),
            name.replace("_", " "),
            baseline,
            value,
        )
        if value > 1.0:
            log.warning("%s %s resolves to %.4f > 1: no model can reach it", what, text, value)
        return ResolvedThreshold(value, text, baseline_miou=baseline, baseline=name)
    if not threshold.relative:
        return ResolvedThreshold(threshold.value, text)
    base_checkpoint(threshold, meta, what, source)
    base = measure_base_miou(meta, inputs, device, metric, amp, batch_size)
    value = threshold.resolve(base)
    log.info(
        "%s %s: base model %s has %s %.4f on the %d validation images -> threshold %.4f",
        what,
        text,
        meta.checkpoint,
        metric,
        base,
        len(inputs),
        value,
    )
    if value > 1.0:
        log.warning("%s %s resolves to %.4f > 1: no model can reach it", what, text, value)
    return ResolvedThreshold(value, text, base)
