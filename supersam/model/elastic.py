"""The elastic weight-sharing supernet over a ``segment_anything`` Sam (paper Sec. III; docs/method.md).

:class:`SuperSam` converts a Sam *in place*: every block's ``MLPBlock`` becomes an
:class:`ElasticMLP` that keeps the same ``lin1``/``lin2`` modules (so state-dict
keys stay in the official layout) and computes with views of their first ``d``
hidden units, and the image encoder becomes an :class:`ElasticImageEncoderViT`
that skips dropped blocks. No weight is copied: every subnet trains the one set
of shared weights. :meth:`SuperSam.get_active_subnet` builds a standalone
``segment_anything`` Sam of the active subnet (weights copied).

Forward hooks on ``lin1``/``lin2`` fire only at full width (sliced widths call
``F.linear`` on views); calibrate on the plain Sam or the max subnet.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, Sam
from segment_anything.modeling.common import MLPBlock
from torch import nn

from supersam.artifacts.records import SupernetMeta
from supersam.model.space import SearchSpace, SubnetConfig, subnet_macs, subnet_params
from supersam.runtime.errors import ConfigError


class ElasticMLP(nn.Module):
    """``MLPBlock`` (lin1 -> GELU -> lin2) whose hidden width can be cut to ``active_dim``.

    Shares ``mlp``'s ``lin1``, ``lin2`` and ``act`` modules. Input/output: ... x C.
    At width d the forward uses ``lin1.weight[:d]`` (d x C), ``lin1.bias[:d]`` and
    ``lin2.weight[:, :d]`` (C x d): views, so gradients land in the shared weights
    (zero beyond the first d units). At full width it is exactly ``MLPBlock.forward``.
    """

    def __init__(self, mlp: MLPBlock) -> None:
        super().__init__()
        self.lin1, self.lin2, self.act = mlp.lin1, mlp.lin2, mlp.act
        self.max_dim = mlp.lin1.out_features
        self.active_dim = self.max_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.active_dim
        if d == self.max_dim:
            return self.lin2(self.act(self.lin1(x)))
        hidden = self.act(F.linear(x, self.lin1.weight[:d], self.lin1.bias[:d]))  # ... x d
        return F.linear(hidden, self.lin2.weight[:, :d], self.lin2.bias)


class ElasticImageEncoderViT(ImageEncoderViT):
    """``ImageEncoderViT`` that runs only ``active_blocks`` (each with its own window/global attention).

    Built from an existing encoder, sharing its ``patch_embed``, ``pos_embed``,
    ``blocks`` and ``neck`` (no copies); blocks' MLPs become :class:`ElasticMLP`.
    Input B x 3 x S x S, output B x out_chans x S/16 x S/16.
    """

    def __init__(self, encoder: ImageEncoderViT) -> None:
        nn.Module.__init__(self)
        self.img_size = encoder.img_size
        self.patch_embed = encoder.patch_embed
        self.pos_embed = encoder.pos_embed
        self.blocks = encoder.blocks
        self.neck = encoder.neck
        for blk in self.blocks:
            if not isinstance(blk.mlp, ElasticMLP):
                blk.mlp = ElasticMLP(blk.mlp)
        self.active_blocks: tuple[int, ...] = tuple(range(len(self.blocks)))

    def set_active(self, cfg: SubnetConfig) -> None:
        """Run the blocks ``cfg.kept_layers``, block i at MLP width ``cfg.mlp_dims[i]``."""
        for blk, d in zip(self.blocks, cfg.mlp_dims):
            blk.mlp.active_dim = d or blk.mlp.max_dim
        self.active_blocks = tuple(cfg.kept_layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # B x G x G x C
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for i in self.active_blocks:
            x = self.blocks[i](x)
        return self.neck(x.permute(0, 3, 1, 2))


@dataclass(frozen=True)
class EncoderSpec:
    """Everything but depth/MLP widths/global blocks needed to rebuild an ``ImageEncoderViT``."""

    img_size: int
    patch_size: int
    in_chans: int
    embed_dim: int
    num_heads: int
    out_chans: int
    window_size: int
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    norm_eps: float = 1e-6

    @classmethod
    def from_encoder(cls, enc: ImageEncoderViT) -> EncoderSpec:
        """Read the spec off a built encoder (plain or elastic)."""
        blk = enc.blocks[0]
        return cls(
            img_size=enc.img_size,
            patch_size=enc.patch_embed.proj.kernel_size[0],
            in_chans=enc.patch_embed.proj.in_channels,
            embed_dim=enc.patch_embed.proj.out_channels,
            num_heads=blk.attn.num_heads,
            out_chans=enc.neck[0].out_channels,
            window_size=max(b.window_size for b in enc.blocks),
            qkv_bias=blk.attn.qkv.bias is not None,
            use_abs_pos=enc.pos_embed is not None,
            use_rel_pos=blk.attn.use_rel_pos,
            norm_eps=blk.norm1.eps,
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form (stored in an export's config.json)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderSpec:
        """Inverse of :meth:`to_dict` (TypeError on unknown/missing keys)."""
        return cls(**data)


def build_encoder(
    spec: EncoderSpec, mlp_dims: list[int], global_attn_indexes: list[int], device: Any = "meta"
) -> ImageEncoderViT:
    """A plain ``ImageEncoderViT`` with ``len(mlp_dims)`` blocks, block j an ``MLPBlock`` of
    width ``mlp_dims[j]``, global attention at ``global_attn_indexes`` (new positions).

    Built on ``device`` (default meta: no memory, no init time); load weights with
    ``load_state_dict(..., assign=True)``.
    """
    with torch.device(device):
        enc = ImageEncoderViT(
            img_size=spec.img_size,
            patch_size=spec.patch_size,
            in_chans=spec.in_chans,
            embed_dim=spec.embed_dim,
            depth=len(mlp_dims),
            num_heads=spec.num_heads,
            mlp_ratio=4.0,
            out_chans=spec.out_chans,
            qkv_bias=spec.qkv_bias,
            norm_layer=partial(nn.LayerNorm, eps=spec.norm_eps),
            act_layer=nn.GELU,
            use_abs_pos=spec.use_abs_pos,
            use_rel_pos=spec.use_rel_pos,
            window_size=spec.window_size,
            global_attn_indexes=tuple(global_attn_indexes),
        )
        for blk, d in zip(enc.blocks, mlp_dims):
            if blk.mlp.lin1.out_features != d:
                blk.mlp = MLPBlock(spec.embed_dim, int(d), nn.GELU)
    return enc


def cut_mlp_tensor(name: str, value: torch.Tensor, width: int) -> torch.Tensor:
    """Slice one block tensor to MLP ``width`` (paper Sec. III-B: the first ``width`` hidden units
    after reordering): ``mlp.lin1.weight`` width x C and ``mlp.lin1.bias`` (width,) keep their
    first rows, ``mlp.lin2.weight`` C x width its first columns; any other tensor is returned as is.

    Args:
        name: the tensor's name inside its block (``mlp.lin1.weight``...).
    """
    if name in ("mlp.lin1.weight", "mlp.lin1.bias"):
        return value[:width]
    if name == "mlp.lin2.weight":
        return value[:, :width]
    return value


def subnet_encoder_state(encoder: ImageEncoderViT, cfg: SubnetConfig) -> dict[str, torch.Tensor]:
    """State dict of subnet ``cfg``'s standalone encoder: kept blocks renumbered 0..k-1,
    lin1 rows/bias and lin2 columns cut to the block's width (contiguous copies)."""
    new_index = {old: new for new, old in enumerate(cfg.kept_layers)}
    out = {}
    for key, value in encoder.state_dict().items():
        value = value.detach()
        if key.startswith("blocks."):
            _, old, rest = key.split(".", 2)
            if int(old) not in new_index:
                continue
            value = cut_mlp_tensor(rest, value, cfg.mlp_dims[int(old)])
            key = f"blocks.{new_index[int(old)]}.{rest}"
        out[key] = value.clone(memory_format=torch.contiguous_format)
    return out


class SuperSam(nn.Module):
    """Weight-sharing supernet over SAM's image encoder (paper Sec. III, Fig. 2).

    Args:
        sam: a ``segment_anything`` Sam; converted in place (its encoder becomes an
            :class:`ElasticImageEncoderViT`), so ``.sam`` works with
            :mod:`supersam.measure.inference` and ``SamPredictor``. ``state_dict()`` keys are the
            official SAM layout under ``sam.``.
        space: the :class:`SearchSpace`; its depth and mlp_dim must match ``sam``.
        meta: what the supernet is (architecture, img_size, variant, provenance);
            needed by :meth:`params`, :meth:`macs` and ``checkpoint.save_supernet``.

    Raises:
        ConfigError: the space does not fit the model.
    """

    def __init__(self, sam: Sam, space: SearchSpace, meta: SupernetMeta | None = None) -> None:
        super().__init__()
        blocks = sam.image_encoder.blocks
        if len(blocks) != space.depth:
            raise ConfigError(
                f"search space has depth {space.depth} but the SAM encoder has {len(blocks)} blocks; "
                "use the space of this model type"
            )
        for i, blk in enumerate(blocks):
            if blk.mlp.lin1.out_features != space.mlp_dim or not isinstance(blk.mlp.act, nn.GELU):
                raise ConfigError(
                    f"encoder block {i} has MLP width {blk.mlp.lin1.out_features}, "
                    f"the search space expects {space.mlp_dim} with GELU"
                )
        if not isinstance(sam.image_encoder, ElasticImageEncoderViT):
            sam.image_encoder = ElasticImageEncoderViT(sam.image_encoder)
        self.sam = sam
        self.space = space
        self.meta = meta
        self._active = space.max_subnet()
        self.sam.image_encoder.set_active(self._active)

    def _meta(self) -> SupernetMeta:
        if self.meta is None:
            raise ConfigError(
                "this supernet has no metadata (model type, img_size); load it with "
                "checkpoint.load_supernet or pass meta=SupernetMeta(...)"
            )
        return self.meta

    def params(self, subnet: SubnetConfig | dict | None = None) -> int:
        """Parameters (elements) of all of SAM for ``subnet`` (default: the active one) at ``meta.img_size``.

        Equals ``sum(p.numel())`` of the model :meth:`get_active_subnet` returns.

        Raises:
            ConfigError: no ``meta``, or ``subnet`` is not in the search space.
        """
        cfg = self._subnet(subnet)
        return subnet_params(self._meta().model_type, self._meta().img_size, cfg)

    def macs(self, subnet: SubnetConfig | dict | None = None) -> int:
        """MACs of one image + one prompt through ``subnet`` (default: active) at ``meta.img_size``.

        Raises:
            ConfigError: no ``meta``, or ``subnet`` is not in the search space.
        """
        cfg = self._subnet(subnet)
        return subnet_macs(self._meta().model_type, self._meta().img_size, cfg)

    def _subnet(self, subnet: SubnetConfig | dict | None) -> SubnetConfig:
        if subnet is None:
            return self._active
        cfg = subnet if isinstance(subnet, SubnetConfig) else SubnetConfig.from_dict(subnet)
        self.space.validate(cfg)
        return cfg

    @property
    def active_subnet(self) -> SubnetConfig:
        """The subnet the forward currently runs."""
        return self._active

    def set_active_subnet(self, cfg: SubnetConfig | dict) -> SubnetConfig:
        """Make ``cfg`` (a SubnetConfig or its JSON dict) the active subnet.

        Raises:
            ConfigError: ``cfg`` is not in the search space (naming the entry).
        """
        cfg = cfg if isinstance(cfg, SubnetConfig) else SubnetConfig.from_dict(cfg)
        self.space.validate(cfg)
        self.sam.image_encoder.set_active(cfg)
        self._active = cfg
        return cfg

    def sample_active_subnet(self, kind: str = "random", generator: torch.Generator | None = None) -> SubnetConfig:
        """Activate and return the ``max``, ``min`` or a ``random`` subnet (sandwich rule).

        Raises:
            ConfigError: unknown ``kind``.
        """
        return self.set_active_subnet(self.space.subnet(kind, generator))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Image embeddings of the active subnet: B x 3 x S x S -> B x 256 x S/16 x S/16."""
        return self.sam.image_encoder(images)

    def get_active_subnet(self) -> Sam:
        """Standalone ``segment_anything`` Sam of the active subnet (weights copied, eval mode).

        Its encoder is an ``ImageEncoderViT`` with one block per kept block, each an
        ``MLPBlock`` of its own width, global attention at the kept global blocks'
        new positions; prompt encoder and mask decoder are copies. Same device and
        dtypes as the supernet.
        """
        cfg, enc = self._active, self.sam.image_encoder
        kept = cfg.kept_layers
        global_new = [j for j, i in enumerate(kept) if enc.blocks[i].window_size == 0]
        new_enc = build_encoder(EncoderSpec.from_encoder(enc), [cfg.mlp_dims[i] for i in kept], global_new)
        new_enc.load_state_dict(subnet_encoder_state(enc, cfg), strict=True, assign=True)
        sam = Sam(new_enc, copy.deepcopy(self.sam.prompt_encoder), copy.deepcopy(self.sam.mask_decoder))
        sam.pixel_mean = self.sam.pixel_mean.detach().clone()
        sam.pixel_std = self.sam.pixel_std.detach().clone()
        for p in sam.parameters():
            p.grad = None
        return sam.eval()
