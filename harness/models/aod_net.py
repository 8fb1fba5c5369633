"""AOD-Net (Li et al., ICCV 2017): all-in-one dehazing by a jointly estimated K(x).

The atmospheric scattering model is rewritten as J = K * I - K + b (b = 1), where K folds the
transmission and the airlight together. Five 3-channel conv layers (1x1, 3x3, 5x5, 7x7, 3x3, each
followed by ReLU) estimate K; the 3rd sees layers 1-2, the 4th layers 2-3, the 5th layers 1-4.
1,761 parameters. The official release is Caffe; ``conv1..conv5`` name its five conv layers in order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from harness.models.base import DehazeNet, Published, register_backbone, variant_config


class AODNet(DehazeNet):
    """The five-layer K-estimation module and the clean-image layer ``ReLU(K * I - K + b)``."""

    multiple = 1

    b = 1.0  # the constant bias of the reformulated scattering model

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 3, 1)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 3, 5, padding=2)
        self.conv4 = nn.Conv2d(6, 3, 7, padding=3)
        self.conv5 = nn.Conv2d(12, 3, 3, padding=1)

    def restore(self, x: torch.Tensor) -> torch.Tensor:
        x1 = F.relu(self.conv1(x))
        x2 = F.relu(self.conv2(x1))
        x3 = F.relu(self.conv3(torch.cat([x1, x2], dim=1)))
        x4 = F.relu(self.conv4(torch.cat([x2, x3], dim=1)))
        k = F.relu(self.conv5(torch.cat([x1, x2, x3, x4], dim=1)))
        return F.relu(k * x - k + self.b)

    def lora_sites(self) -> dict[str, list[str]]:
        """One group per conv layer (each is a different receptive field)."""
        return {f"conv{i}": [f"conv{i}"] for i in range(1, 6)}


# AOD-Net is already tiny (1,761 parameters): both variants are the published network.
_CONFIGS: dict[str, dict] = {"full": {}, "tiny": {}}


@register_backbone(
    "aod_net",
    variants={"full": Published(1_761, 0.11e9, "macs", "AOD-Net paper (Caffe release)"), "tiny": None},
    multiple=1,
    channels_last=True,  # CPU training 1.4-1.6x faster (3-channel convs): backbone_throughput.py --compare layout
    description="AOD-Net: five-conv K(x) estimator, J = ReLU(K*I - K + 1)",
)
def build_aod_net(variant: str = "full") -> AODNet:
    """AOD-Net; ``full`` and ``tiny`` are the same 1,761-parameter network."""
    return AODNet(**variant_config("aod_net", _CONFIGS, variant))
