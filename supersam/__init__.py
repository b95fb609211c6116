"""supersam: SuperSAM (arXiv 2501.08504) - Segment Anything as a weight-sharing supernet.

Public entry points:
- :func:`supersam.model.sam.build_sam` builds ``vit_b``/``vit_l``/``vit_h`` or the tiny
  test configuration at any input size, optionally loading an official checkpoint.
- :func:`supersam.load_model` loads a subnet exported by ``supersam export`` as a
  standard ``segment_anything.modeling.Sam``.
"""

__version__ = "0.1.0"


def load_model(path, device="cpu"):
    """Load an exported subnet directory as a standard ``segment_anything`` ``Sam``.

    See :func:`supersam.model.checkpoint.load_model`; imported lazily so ``import supersam``
    stays cheap.
    """
    from supersam.model.checkpoint import load_model as _load

    return _load(path, device=device)


__all__ = ["load_model", "__version__"]
