"""Calibration statistics of every encoder MLP: Wanda activation norms (paper Eq. 1) and the artifact.

Forward hooks on each image-encoder block's ``mlp.lin1`` and ``mlp.lin2`` feed
a :class:`SquaredNormAccumulator` (in the spirit of locuslab/wanda
``lib/layerwrapper.py``: hooks here, accumulators separate): per input feature,
the sum of x^2 over every token seen, so ``||X_j||_2 = sqrt(sum_sq[j])`` over all
calibration tokens without keeping any activation. The scoring itself lives in
:mod:`supersam.model.reorder`; the ``calibrate`` stage (:mod:`supersam.stages.calibrate`)
runs the pass and writes the :class:`CalibrationStats` artifact, which records
which model it belongs to so a supernet is never built from another model's stats.
The artifact also carries SlimSAM's disturbed Taylor importance per hidden unit
(:mod:`supersam.model.taylor`) when ``calibrate.criteria`` asks for it; its ``criteria``
field says which statistics it holds (:data:`CRITERIA`).
See docs/method.md, "Wanda score and MLP reordering" and "Taylor importance".
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from supersam.model.sam import LoadedSam, state_digest
from supersam.runtime.device import autocast
from supersam.runtime.errors import CheckpointError, ConfigError
from supersam.runtime.io import load_torch, torch_save

STATS_FORMAT = "supersam-activation-stats/2"  # /2: ``criteria`` (a list) replaces /1's ``kind``
LEGACY_FORMATS = ("supersam-activation-stats/1",)  # wanda only, read as criteria ("wanda",)

# criterion -> per block: stats key -> which size it has ("in" = lin1 inputs C, "hidden" = MLP units)
CRITERIA: dict[str, dict[str, str]] = {
    "wanda": {"lin1": "in", "lin2": "hidden"},  # squared L2 norms of lin1's / lin2's inputs
    "taylor": {"taylor_lin1": "hidden", "taylor_lin2": "hidden"},  # disturbed Taylor importance per unit
}


def criterion_shapes(criterion: str, mlp: nn.Module) -> dict[str, int]:
    """The stats keys ``criterion`` stores per block and their lengths for ``mlp``."""
    size = {"in": mlp.lin1.in_features, "hidden": mlp.lin1.out_features}
    return {key: size[kind] for key, kind in CRITERIA[criterion].items()}


def check_criteria(criteria, what: str = "calibrate.criteria") -> tuple[str, ...]:
    """``criteria`` as a tuple of known, distinct names (a single name is accepted).

    Raises:
        ConfigError: empty, unknown or repeated entry (one line naming it).
    """
    names = (criteria,) if isinstance(criteria, str) else tuple(criteria)
    if not names:
        raise ConfigError(f"{what} is empty; list one or more of {', '.join(CRITERIA)}")
    for name in names:
        if name not in CRITERIA:
            raise ConfigError(f"{what} entry {name!r} is unknown; use one or more of {', '.join(CRITERIA)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"{what} lists a criterion twice: {list(names)}")
    return names


class SquaredNormAccumulator:
    """Streaming per-feature sum of squares of a layer input over all tokens.

    Attributes:
        sum_sq: (D,) float64, ``sum over tokens t of x[t, j]**2`` for feature j.
        n_tokens: number of token vectors seen.
    """

    def __init__(self, features: int, device: torch.device | str = "cpu") -> None:
        self.sum_sq = torch.zeros(features, dtype=torch.float64, device=device)
        self.n_tokens = 0

    def add(self, x: torch.Tensor) -> None:
        """Accumulate a batch of inputs ``x`` (... x D, any float dtype)."""
        flat = x.detach().reshape(-1, x.shape[-1])  # T x D
        sum_sq = flat.float().square().sum(dim=0)  # D, fp32 (10x faster than a dim-0 vector_norm)
        self.sum_sq += sum_sq.to(self.sum_sq.device, torch.float64)
        self.n_tokens += flat.shape[0]

    def hook(self, module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        """``register_forward_hook`` callback: accumulates ``args[0]``, the layer input."""
        self.add(args[0])


def encoder_blocks(model: nn.Module) -> nn.ModuleList:
    """The ViT blocks of a Sam (``model.image_encoder.blocks``) or of an image encoder."""
    encoder = getattr(model, "image_encoder", model)
    return encoder.blocks


@contextlib.contextmanager
def record_mlp_inputs(model: nn.Module) -> Iterator[list[dict[str, SquaredNormAccumulator]]]:
    """Hook every block's ``mlp.lin1`` (C inputs) and ``mlp.lin2`` (hidden inputs).

    Yields one ``{"lin1": acc, "lin2": acc}`` per block; the hooks are removed on
    exit, also when the forward raises.
    """
    handles, accumulators = [], []
    try:
        for block in encoder_blocks(model):
            lin1, lin2 = block.mlp.lin1, block.mlp.lin2
            device = lin1.weight.device
            accs = {
                "lin1": SquaredNormAccumulator(lin1.in_features, device),
                "lin2": SquaredNormAccumulator(lin2.in_features, device),
            }
            handles.append(lin1.register_forward_hook(accs["lin1"].hook))
            handles.append(lin2.register_forward_hook(accs["lin2"].hook))
            accumulators.append(accs)
        yield accumulators
    finally:
        for handle in handles:
            handle.remove()


def collect_mlp_sq_norms(
    model: nn.Module,
    images: Sequence[torch.Tensor],
    batch_size: int = 4,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> tuple[list[dict[str, torch.Tensor]], int]:
    """One inference pass of the image encoder over ``images``, recording MLP input norms.

    Args:
        model: a Sam (or its image encoder) already on ``device``.
        images: preprocessed 3 x S x S float tensors (SAM-normalised, padded).
        batch_size: images per forward.
        amp: bf16 autocast.

    Returns:
        per block ``{"lin1": (C,), "lin2": (mlp_dim,)}`` float64 CPU squared L2
        norms over all tokens, and the number of tokens per block (N * S/16 * S/16).

    Raises:
        ConfigError: no images or a batch size < 1.
    """
    if not images:
        raise ConfigError("no calibration images; set calibrate.n_images > 0 and check the data section")
    if batch_size < 1:
        raise ConfigError(f"calibrate.batch_size must be >= 1, got {batch_size}")
    device = torch.device(device)
    encoder = getattr(model, "image_encoder", model)
    with record_mlp_inputs(model) as accs, torch.inference_mode(), autocast(device, amp):
        for start in range(0, len(images), batch_size):
            batch = torch.stack(list(images[start : start + batch_size])).to(device)  # B x 3 x S x S
            encoder(batch)
    n_tokens = accs[0]["lin1"].n_tokens
    return [{k: acc.sum_sq.cpu() for k, acc in block.items()} for block in accs], n_tokens


def weights_digest(model: nn.Module) -> str:
    """SHA-1 of the image encoder's weights (:func:`supersam.model.sam.state_digest`); ties stats to weights."""
    return state_digest(getattr(model, "image_encoder", model))


@dataclasses.dataclass
class CalibrationStats:
    """Calibration statistics of one model, per encoder block.

    Attributes:
        criteria: the criteria whose statistics ``blocks`` hold (``wanda``, ``taylor``;
            a single name is accepted and stored as a 1-tuple).
        model_type, img_size, pretrained, checkpoint: the model they were measured on.
        weights_digest: :func:`weights_digest` of that model.
        n_images: calibration images; n_tokens: tokens per block (0 when ``wanda`` was not measured).
        blocks: per block, float64 CPU tensors: ``wanda``: ``"lin1"`` (C,) and
            ``"lin2"`` (mlp_dim,) squared L2 norms of the MLP inputs over all tokens;
            ``taylor``: ``"taylor_lin1"`` and ``"taylor_lin2"`` (mlp_dim,) disturbed
            Taylor importance per hidden unit (SlimSAM Eq. 4, :mod:`supersam.model.taylor`).
        settings: how the statistics were measured (e.g. ``taylor_noise_std``, ``seed``).
    """

    criteria: tuple[str, ...]
    model_type: str
    img_size: int
    pretrained: bool
    checkpoint: str
    weights_digest: str
    n_images: int
    n_tokens: int
    blocks: list[dict[str, torch.Tensor]]
    settings: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.criteria = check_criteria(self.criteria, "calibration stats criteria")

    def norms(self, block: int, layer: str) -> torch.Tensor:
        """L2 norms ||X_j||_2 of ``layer``'s (``lin1``/``lin2``) input features in ``block``."""
        return self.blocks[block][layer].sqrt()

    def save(self, path: str | Path) -> Path:
        """Write the artifact atomically (``torch.save`` of plain types and tensors)."""
        return torch_save({"format": STATS_FORMAT, **dataclasses.asdict(self), "criteria": list(self.criteria)}, path)

    @classmethod
    def load(cls, path: str | Path) -> CalibrationStats:
        """Read an artifact written by :meth:`save` (``weights_only=True``).

        Raises:
            CheckpointError: missing, unreadable or not a stats artifact.
        """
        obj = load_torch(
            path,
            "calibration stats",
            "run `supersam calibrate` or fix supernet.stats",
            "rerun `supersam calibrate`",
        )
        if not isinstance(obj, dict) or obj.get("format") not in (STATS_FORMAT, *LEGACY_FORMATS):
            raise CheckpointError(
                f"{path} is not a calibration stats file ({STATS_FORMAT}); rerun `supersam calibrate`"
            )
        if obj["format"] in LEGACY_FORMATS:
            obj = {**obj, "criteria": (obj.get("kind", "wanda"),)}
        fields = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in obj.items() if k in fields})
        except (TypeError, ConfigError) as exc:
            raise CheckpointError(
                f"{path} is a damaged calibration stats file ({exc}); rerun `supersam calibrate`"
            ) from None

    def check_matches(self, loaded: LoadedSam, source: str = "calibration stats") -> None:
        """Refuse stats measured on another model, input size, checkpoint or weights.

        Raises:
            ConfigError: one line naming the mismatch and the fix.
        """
        fix = "rerun `supersam calibrate` with the same model section"
        mine, theirs = _norm_ckpt(self.checkpoint), _norm_ckpt(loaded.checkpoint)
        for what, have, want in (
            ("model type", self.model_type, loaded.model_type),
            ("img_size", self.img_size, loaded.img_size),
            ("checkpoint", mine or "<random init>", theirs or "<random init>"),
        ):
            if have != want:
                raise ConfigError(f"{source} are for {what} {have}, but the model has {want}; {fix}")
        if self.weights_digest != weights_digest(loaded.model):
            raise ConfigError(
                f"{source} were measured on different weights (changed checkpoint file or random init); {fix}"
            )


def _norm_ckpt(path: str | None) -> str:
    return str(Path(path).resolve()) if path else ""
