"""Backbones: one module per network, each registering its full and tiny variants on import."""

from harness.models.base import (  # noqa: F401
    BACKBONE_CARDS,
    BackboneCard,
    DehazeNet,
    Published,
    build_backbone,
    count_params,
    pad_to_multiple,
    register_backbone,
)

# Importing each backbone module registers it; add one line per backbone module.
