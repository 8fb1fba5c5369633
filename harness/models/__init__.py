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
from harness.models import dea_net  # noqa: F401
from harness.models import msbdn  # noqa: F401
from harness.models import convir  # noqa: F401
from harness.models import dehamer  # noqa: F401
from harness.models import ffa_net  # noqa: F401
from harness.models import aod_net  # noqa: F401
from harness.models import grid_dehaze_net  # noqa: F401
from harness.models import lorun  # noqa: F401
from harness.models import vlu_net  # noqa: F401
