"""The SuperSAM search space: which blocks may be dropped, which MLP widths a kept block may use.

docs/method.md, "Search space and MLP dims" and "Drop probabilities theta_i".

Paper Sec. III ("Search Space design"): two elastic dimensions over the image
encoder. (1) Layer elasticity: each block i of the prunable set is dropped with
probability theta_i (paper: blocks 1, 2, 5, 6, 9, theta 0.5). (2) MLP
elasticity: every kept block but block 0 keeps the first w hidden units of its
(reordered) MLP for an MLP dim d in {768, 1020, 1536, 2304, 3072} (vit_b).
Block 0 is protected from both.

A subnet is a :class:`SubnetConfig` (docs/contracts.md, "Subnet config").
:func:`subnet_params` and :func:`subnet_macs` give its size and compute
analytically, at any input size, without building a model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from supersam.model.sam import PATCH_SIZE, check_img_size, get_arch
from supersam.runtime.errors import ConfigError
from supersam.runtime.io import read_json, write_json

PAPER_PRUNABLE = (1, 2, 5, 6, 9)
PAPER_DROP_PROB = 0.5
PAPER_MLP_DIMS = (768, 1020, 1536, 2304, 3072)  # vit_b, MLP width 3072
# the paper's MLP dims as fractions of the full MLP width: 0.25, 0.332, 0.5, 0.75, 1
PAPER_MLP_DIM_FRACTIONS = tuple(v / PAPER_MLP_DIMS[-1] for v in PAPER_MLP_DIMS)
SUBNET_KINDS = ("max", "min", "random")


def _int_tuple(values: Any, what: str) -> tuple[int, ...]:
    if not isinstance(values, (list, tuple)):
        raise ConfigError(f"{what} must be a list of integers, got {values!r}")
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ConfigError(f"{what}[{i}] must be a non-negative integer, got {v!r}")
    return tuple(int(v) for v in values)


@dataclass(frozen=True)
class SubnetConfig:
    """One subnet: the kept encoder blocks and the MLP width of every block.

    Attributes:
        kept_layers: ascending indices of the encoder blocks that run.
        mlp_dims: one MLP hidden width per encoder block (len == depth); 0 for a
            dropped block. Example (vit_b)::

                {"kept_layers": [0, 3, 4, 7, 8, 10, 11],
                 "mlp_dims": [3072, 0, 0, 768, 1536, 0, 0, 2304, 768, 0, 3072, 1020]}

    Raises:
        ConfigError: an entry is not a non-negative integer.
    """

    kept_layers: tuple[int, ...]
    mlp_dims: tuple[int, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "kept_layers", _int_tuple(self.kept_layers, "subnet kept_layers"))
        object.__setattr__(self, "mlp_dims", _int_tuple(self.mlp_dims, "subnet mlp_dims"))

    @classmethod
    def from_mlp_dims(cls, mlp_dims: Any) -> SubnetConfig:
        """Subnet whose kept blocks are those with a non-zero width."""
        dims = _int_tuple(mlp_dims, "subnet mlp_dims")
        return cls(tuple(i for i, d in enumerate(dims) if d > 0), dims)

    def to_dict(self) -> dict[str, list[int]]:
        """The JSON form (docs/contracts.md) ``{"kept_layers": [...], "mlp_dims": [...]}``."""
        return {"kept_layers": list(self.kept_layers), "mlp_dims": list(self.mlp_dims)}

    @classmethod
    def from_dict(cls, data: Any) -> SubnetConfig:
        """Build from the JSON form; extra keys (e.g. ``params``, ``miou``) are ignored.

        Raises:
            ConfigError: not a mapping, or ``kept_layers``/``mlp_dims`` missing or malformed.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"subnet config must be a JSON object with kept_layers and mlp_dims, got {data!r}")
        for key in ("kept_layers", "mlp_dims"):
            if key not in data:
                raise ConfigError(
                    f'subnet config is missing {key!r}; expected {{"kept_layers": [...], "mlp_dims": [...]}}'
                )
        return cls(data["kept_layers"], data["mlp_dims"])

    @classmethod
    def load(cls, source: str | Path | dict) -> SubnetConfig:
        """Read a subnet from a JSON file path, an inline JSON string (``{...}``) or a dict.

        Raises:
            ConfigError: missing file, invalid JSON, or a malformed config.
        """
        if isinstance(source, dict):
            return cls.from_dict(source)
        text = str(source).strip()
        if text.startswith("{"):
            try:
                return cls.from_dict(json.loads(text))
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"inline subnet config is not valid JSON ({exc.msg} at column {exc.colno}); "
                    "pass a JSON object or a path to a .json file"
                ) from None
            except RecursionError:
                raise ConfigError(
                    'inline subnet config nests too deeply to read; pass {"kept_layers": [...], "mlp_dims": [...]}'
                ) from None
        return cls.from_dict(read_json(Path(text), "subnet config"))

    def save(self, path: str | Path) -> Path:
        """Write the JSON form to ``path`` atomically."""
        return write_json(path, self.to_dict())


@dataclass(frozen=True)
class SearchSpace:
    """Prunable blocks with drop probabilities theta_i, and the MLP dims (paper Sec. III).

    Attributes:
        depth: number of encoder blocks (12 for vit_b).
        mlp_dim: full MLP hidden width (3072 for vit_b).
        prunable: blocks that may be dropped (ascending; never block 0).
        drop_probs: theta_i, the probability each prunable block is dropped by
            :meth:`sample` (same order as ``prunable``).
        mlp_dim_choices: allowed MLP widths, strictly ascending, the last == ``mlp_dim``.

    Raises:
        ConfigError: block 0 or a missing block in ``prunable``, a probability
            outside [0, 1], badly ordered mlp_dim_choices or ones not ending at ``mlp_dim``.
    """

    depth: int
    mlp_dim: int
    prunable: tuple[int, ...]
    drop_probs: tuple[float, ...]
    mlp_dim_choices: tuple[int, ...]

    def __post_init__(self) -> None:
        prunable = _int_tuple(self.prunable, "search space prunable")
        if not isinstance(self.drop_probs, (list, tuple)) or len(self.drop_probs) != len(prunable):
            raise ConfigError(
                f"search space drop_probs {self.drop_probs!r} must hold one probability per prunable block "
                f"({len(prunable)})"
            )
        probs = tuple(float(p) for p in self.drop_probs)
        pairs = sorted(zip(prunable, probs))
        object.__setattr__(self, "prunable", tuple(b for b, _ in pairs))
        object.__setattr__(self, "drop_probs", tuple(p for _, p in pairs))
        object.__setattr__(self, "mlp_dim_choices", _int_tuple(self.mlp_dim_choices, "search space mlp_dim_choices"))
        self._check()

    def _check(self) -> None:
        if self.depth < 1 or self.mlp_dim < 1:
            raise ConfigError(f"search space depth {self.depth} and mlp_dim {self.mlp_dim} must be positive")
        if 0 in self.prunable:
            raise ConfigError(
                "search space lists block 0 as prunable; block 0 is protected (paper Sec. III), remove it"
            )
        if len(set(self.prunable)) != len(self.prunable):
            raise ConfigError(f"search space prunable {list(self.prunable)} repeats a block")
        for b in self.prunable:
            if b >= self.depth:
                raise ConfigError(f"search space prunable block {b} does not exist (blocks 0..{self.depth - 1})")
        for b, p in zip(self.prunable, self.drop_probs):
            if not 0.0 <= p <= 1.0:
                raise ConfigError(f"search space drop probability {p} of block {b} is outside [0, 1]")
        w = self.mlp_dim_choices
        if not w or any(v <= 0 for v in w) or any(a >= b for a, b in zip(w, w[1:])):
            raise ConfigError(f"search space mlp_dim_choices {list(w)} must be positive and strictly ascending")
        if w[-1] != self.mlp_dim:
            raise ConfigError(
                f"search space mlp_dim_choices {list(w)} must end with the full MLP width {self.mlp_dim}; add it"
            )

    @classmethod
    def for_arch(
        cls, model_type: str, prunable: Any = None, drop_probs: Any = None, mlp_dim_choices: Any = None
    ) -> SearchSpace:
        """Space for SAM ``model_type``; unset parts default to the paper's.

        Defaults: prunable (1, 2, 5, 6, 9), theta_i = 0.5, mlp_dim_choices (768, 1020,
        1536, 2304, 3072) scaled by mlp_dim / 3072 (vit_ti: 192, 255, 384, 576,
        768; tiny: 64, 85, 128, 192, 256). ``mlp_dim_choices`` given as numbers <= 1 are
        fractions of the model's MLP width (rounded; the paper's are
        :data:`PAPER_MLP_DIM_FRACTIONS`), so one setting serves every model type;
        numbers > 1 are absolute widths. ``drop_probs`` may be one float for
        every prunable block.

        Raises:
            ConfigError: unknown model type or an invalid space.
        """
        arch = get_arch(model_type)
        prunable = tuple(PAPER_PRUNABLE if prunable is None else prunable)
        if drop_probs is None or isinstance(drop_probs, (int, float)):
            drop_probs = (PAPER_DROP_PROB if drop_probs is None else float(drop_probs),) * len(prunable)
        if mlp_dim_choices is None:
            mlp_dim_choices = PAPER_MLP_DIM_FRACTIONS
        if mlp_dim_choices and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in mlp_dim_choices
        ):
            mlp_dim_choices = tuple(round(float(v) * arch.mlp_dim) for v in mlp_dim_choices)
        elif isinstance(mlp_dim_choices, (list, tuple)):
            mlp_dim_choices = tuple(int(v) if isinstance(v, float) and v.is_integer() else v for v in mlp_dim_choices)
        return cls(arch.depth, arch.mlp_dim, prunable, tuple(drop_probs), tuple(mlp_dim_choices))

    def validate(self, cfg: SubnetConfig) -> None:
        """Check that ``cfg`` belongs to this space.

        Raises:
            ConfigError: naming the offending entry (wrong length, block 0 dropped
                or sliced, kept_layers inconsistent with mlp_dims, a non-prunable
                block dropped, a width that is not an allowed MLP dim).
        """
        dims, kept = cfg.mlp_dims, cfg.kept_layers
        if len(dims) != self.depth:
            raise ConfigError(
                f"subnet mlp_dims has {len(dims)} entries but the encoder has {self.depth} blocks; "
                "give one width per block (0 = dropped)"
            )
        for b in kept:
            if b >= self.depth:
                raise ConfigError(f"subnet kept_layers entry {b} is not a block (0..{self.depth - 1})")
        if any(a >= b for a, b in zip(kept, kept[1:])):
            raise ConfigError(f"subnet kept_layers {list(kept)} must be strictly ascending")
        if 0 not in kept or dims[0] == 0:
            raise ConfigError("subnet drops block 0, which is protected (paper Sec. III); keep block 0 at full width")
        if dims[0] != self.mlp_dim:
            raise ConfigError(
                f"subnet slices block 0 (mlp_dims[0]={dims[0]}); block 0 is protected, use {self.mlp_dim}"
            )
        kept_set = set(kept)
        for i, d in enumerate(dims):
            if i in kept_set and d == 0:
                raise ConfigError(
                    f"subnet mlp_dims[{i}]=0 but block {i} is in kept_layers; give it an allowed MLP dim or drop it "
                    "from kept_layers"
                )
            if i not in kept_set and d != 0:
                raise ConfigError(
                    f"subnet mlp_dims[{i}]={d} but block {i} is not in kept_layers; set mlp_dims[{i}]=0 or keep "
                    f"block {i}"
                )
            if i not in kept_set and i not in self.prunable:
                raise ConfigError(
                    f"subnet drops block {i}, which is not prunable "
                    f"(prunable: {', '.join(map(str, self.prunable))}); keep block {i}"
                )
            if d and d not in self.mlp_dim_choices:
                raise ConfigError(
                    f"subnet mlp_dims[{i}]={d} is not an allowed MLP dim of the search space "
                    f"{list(self.mlp_dim_choices)}"
                )

    def max_subnet(self) -> SubnetConfig:
        """Every block kept at full width (= the original SAM)."""
        return SubnetConfig(tuple(range(self.depth)), (self.mlp_dim,) * self.depth)

    def min_subnet(self) -> SubnetConfig:
        """Every prunable block dropped, every other block but 0 at the smallest MLP dim."""
        dims = [0 if i in self.prunable else self.mlp_dim_choices[0] for i in range(self.depth)]
        dims[0] = self.mlp_dim
        return SubnetConfig.from_mlp_dims(dims)

    def subnet(self, kind: str, generator: torch.Generator | None = None) -> SubnetConfig:
        """The ``max``, ``min`` or a ``random`` (:meth:`sample` under ``generator``) subnet (sandwich rule).

        Raises:
            ConfigError: ``kind`` is not one of :data:`SUBNET_KINDS`.
        """
        if kind == "max":
            return self.max_subnet()
        if kind == "min":
            return self.min_subnet()
        if kind == "random":
            return self.sample(generator)
        raise ConfigError(f"unknown subnet kind {kind!r}; use one of {', '.join(SUBNET_KINDS)}")

    def sample(self, generator: torch.Generator | None = None) -> SubnetConfig:
        """Random subnet: prunable block i dropped with probability theta_i, each kept
        block but 0 at an MLP dim drawn uniformly (paper Sec. III). Deterministic under
        ``generator`` (always draws len(prunable) + depth numbers)."""
        drop = (torch.rand(len(self.prunable), generator=generator) < torch.tensor(self.drop_probs)).tolist()
        picks = torch.randint(len(self.mlp_dim_choices), (self.depth,), generator=generator).tolist()
        dropped = {b for b, d in zip(self.prunable, drop) if d}
        dims = [0 if i in dropped else self.mlp_dim_choices[picks[i]] for i in range(self.depth)]
        dims[0] = self.mlp_dim
        return SubnetConfig.from_mlp_dims(dims)

    def size(self) -> int:
        """Number of distinct subnets: |W|^(fixed blocks but 0) * (|W| + 1)^|prunable|."""
        n_choices = len(self.mlp_dim_choices)
        fixed = self.depth - 1 - len(self.prunable)
        return n_choices**fixed * (n_choices + 1) ** len(self.prunable)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``search_space.json``)."""
        return {
            "depth": self.depth,
            "mlp_dim": self.mlp_dim,
            "prunable": list(self.prunable),
            "drop_probs": list(self.drop_probs),
            "mlp_dim_choices": list(self.mlp_dim_choices),
        }

    @classmethod
    def from_dict(cls, data: Any) -> SearchSpace:
        """Inverse of :meth:`to_dict`.

        Raises:
            ConfigError: not a mapping, a key missing, or an invalid space.
        """
        keys = ("depth", "mlp_dim", "prunable", "drop_probs", "mlp_dim_choices")
        if not isinstance(data, dict) or any(k not in data for k in keys):
            raise ConfigError(f"search space must be a mapping with keys {', '.join(keys)}, got {data!r}"[:300])
        try:
            return cls(
                int(data["depth"]),
                int(data["mlp_dim"]),
                tuple(data["prunable"]),
                tuple(data["drop_probs"]),
                tuple(data["mlp_dim_choices"]),
            )
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"search space has a malformed entry ({exc})") from None

    def save(self, path: str | Path) -> Path:
        """Write ``search_space.json`` atomically."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> SearchSpace:
        """Read ``search_space.json``. Raises ConfigError on a missing/invalid file."""
        return cls.from_dict(read_json(path, "search space"))


# ---------------------------------------------------------------- analytic cost


def _check_cfg(depth: int, cfg: SubnetConfig) -> None:
    if len(cfg.mlp_dims) != depth:
        raise ConfigError(f"subnet mlp_dims has {len(cfg.mlp_dims)} entries but the encoder has {depth} blocks")
    if set(cfg.kept_layers) != {i for i, d in enumerate(cfg.mlp_dims) if d}:
        raise ConfigError("subnet kept_layers must be exactly the blocks with a non-zero mlp_dims entry")


def _attn_params(dim: int, internal: int) -> int:  # decoder Attention: q, k, v, out projections
    return 3 * (dim * internal + internal) + internal * dim + dim


def _prompt_decoder_params(arch: Any) -> int:
    """Parameters of PromptEncoder + MaskDecoder (independent of img_size)."""
    D, m, M, H = arch.prompt_embed_dim, arch.mask_in_chans, arch.decoder_mlp_dim, arch.iou_head_hidden_dim
    q = m // 4
    prompt = 6 * D + (4 * q + q) + 2 * q + (q * m * 4 + m) + 2 * m + (m * D + D)
    block = _attn_params(D, D) + 2 * _attn_params(D, D // 2) + 8 * D + (2 * D * M + M + D)
    transformer = 2 * block + _attn_params(D, D // 2) + 2 * D
    upscale = (D * (D // 4) * 4 + D // 4) + 2 * (D // 4) + ((D // 4) * (D // 8) * 4 + D // 8)
    hyper = 4 * (2 * (D * D + D) + D * (D // 8) + D // 8)
    iou = (D * H + H) + (H * H + H) + (H * 4 + 4)
    return prompt + 5 * D + transformer + upscale + hyper + iou


def subnet_params(model_type: str, img_size: int, cfg: SubnetConfig) -> int:
    """Parameters (elements) of all of SAM for subnet ``cfg`` at ``img_size`` px, analytically.

    pos_embed (G x G x C, G = img_size/16) and the rel_pos tables of global blocks
    ((2G-1) x head_dim each) depend on img_size; windowed blocks' tables do not.
    vit_b at 1024: max 93,735,472; blocks 1,2,5,6,9 dropped 58,253,232; the
    paper's smallest subnet 37,005,744.

    Raises:
        ConfigError: unknown model type, bad img_size, or mlp_dims of the wrong length.
    """
    arch = get_arch(model_type)
    _check_cfg(arch.depth, cfg)
    C, G, out = arch.embed_dim, check_img_size(img_size) // PATCH_SIZE, arch.prompt_embed_dim
    head_dim = C // arch.num_heads
    total = C * 3 * PATCH_SIZE**2 + C + G * G * C
    for i in cfg.kept_layers:
        side = G if i in arch.global_attn_indexes else arch.window_size
        d = cfg.mlp_dims[i]
        total += 4 * C + 4 * C * C + 4 * C + 2 * (2 * side - 1) * head_dim + 2 * C * d + d + C
    total += C * out + 9 * out * out + 4 * out
    return total + _prompt_decoder_params(arch)


def _decoder_macs(arch: Any, G: int) -> int:
    """MACs of prompt encoding (1 point/box: 2 sparse tokens), dense PE and the mask decoder."""
    D, M, H = arch.prompt_embed_dim, arch.decoder_mlp_dim, arch.iou_head_hidden_dim
    N, T, Di = G * G, 5 + 2, D // 2
    prompt = 2 * D + N * D  # random-Fourier PE of 2 coords and of the G x G grid
    self_attn = 4 * T * D * D + 2 * T * T * D
    cross = (T * D * Di + 2 * N * D * Di + T * Di * D) + 2 * T * N * Di
    cross_back = (N * D * Di + 2 * T * D * Di + N * Di * D) + 2 * N * T * Di
    transformer = 2 * (self_attn + cross + 2 * T * D * M + cross_back) + cross
    upscale = N * D * (D // 4) * 4 + 4 * N * (D // 4) * (D // 8) * 4
    heads = 4 * (2 * D * D + D * (D // 8)) + 4 * (D // 8) * 16 * N + (D * H + H * H + 4 * H)
    return prompt + transformer + upscale + heads


def subnet_macs(model_type: str, img_size: int, cfg: SubnetConfig) -> int:
    """Multiply-accumulates of one image through subnet ``cfg`` plus one prompt through
    the decoder, analytically (convolutions, linear layers and attention matmuls;
    norms/activations not counted; windowed blocks include their padding tokens).

    Equals ``torch.utils.flop_counter.FlopCounterMode`` total / 2 for the exported
    model (tests check it). vit_b at 1024, max subnet: 487,851,018,752 MACs (at 256: 34,645,494,272).

    Raises:
        ConfigError: unknown model type, bad img_size, or mlp_dims of the wrong length.
    """
    arch = get_arch(model_type)
    _check_cfg(arch.depth, cfg)
    C, G, out = arch.embed_dim, check_img_size(img_size) // PATCH_SIZE, arch.prompt_embed_dim
    total = G * G * C * 3 * PATCH_SIZE**2 + G * G * (C * out + 9 * out * out)
    for i in cfg.kept_layers:
        if i in arch.global_attn_indexes:
            side, padded = G, G
        else:
            side = arch.window_size
            padded = -(-G // side) * side
        tokens = padded * padded  # attention runs on padded windows; n = side^2 tokens each
        attn = tokens * 4 * C * C + 2 * tokens * side * side * C + 2 * tokens * side * C
        total += attn + 2 * G * G * C * cfg.mlp_dims[i]
    return total + _decoder_macs(arch, G)
