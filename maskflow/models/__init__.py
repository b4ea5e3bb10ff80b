"""The frame-masked backbone (a Latte-style transformer over VQ token grids) and its size presets.

``model(tokens int64 [B, T, h, w], t float [B, T]) -> logits [B, T, h, w, K]``; see :mod:`.latte`.
"""

from maskflow.models.latte import (
    MODEL_SIZES,
    BackboneConfig,
    MaskFlowTransformer,
    build_backbone,
    count_parameters,
)

__all__ = ["BackboneConfig", "MaskFlowTransformer", "MODEL_SIZES", "build_backbone", "count_parameters"]
