"""Visual prompt tuning (VPT, Jia et al., 2022) for MMPretrain's ViT.

``P`` learned prompt tokens are inserted after the class token:

    shallow:  z_0 = [cls, p_1..p_P, x_1..x_N]  before the first layer; the
              prompts' outputs travel through every layer and are dropped
              after the last one
    deep:     each layer i gets its own prompts:
              [cls, _, x] -> layer_i([cls, p^i, x]) -> [cls', _, x']

The class token and patch tokens keep their positions, so the backbone's
final norm and output types work unchanged. Not exact at init (the prompts
take part in attention). Parameters: ``P*d`` (shallow), ``L*P*d`` (deep).

VPT applies to a ViT's token sequence only: DETR and Deformable DETR have
no such backbone here (their prompt-like tuner is ``ScaledPrefix``).
"""
import functools
import math
from typing import Dict

import torch
import torch.nn as nn

from mmpetl.registry import TUNERS
from mmpetl.utils import class_names
from .common import check_positive_int
from .base import BaseTuner, TunerHostError

__all__ = ['VPT']


def _is_vit(module: nn.Module) -> bool:
    return 'VisionTransformer' in class_names(module) and hasattr(
        module, 'layers')


@TUNERS.register_module()
class VPT(BaseTuner):
    """Prompt tokens for an MMPretrain ``VisionTransformer``.

    Args:
        dims (int): token width d.
        num_layers (int): transformer layers L.
        num_prompts (int): prompts P per layer (deep) or in total (shallow).
        deep (bool): VPT-deep (new prompts at every layer) or VPT-shallow.
        patch_size (int): for VPT's uniform init range
            ``sqrt(6 / (3 * patch_size**2 + d))``.
    """

    attr_name = 'vpt'
    #: learned tokens (no weight decay by default, see the optimizer)
    token_params = ('prompts', )

    def __init__(self, dims: int, num_layers: int, num_prompts: int = 10,
                 deep: bool = True, patch_size: int = 16,
                 num_extra_tokens: int = 1) -> None:
        super().__init__()
        check_positive_int('num_prompts', num_prompts, 'VPT')
        self.num_prompts, self.deep = num_prompts, deep
        self.num_extra_tokens = num_extra_tokens
        bound = math.sqrt(6.0 / (3 * patch_size**2 + dims))
        self.prompts = nn.Parameter(
            torch.empty(num_layers if deep else 1, num_prompts,
                        dims).uniform_(-bound, bound))

    @classmethod
    def resolve_hosts(cls, name, module, **tuner_kwargs):
        if _is_vit(module):
            return [(name, module)]
        raise TunerHostError(
            f'VPT cannot tune `{name}` of type {type(module).__name__}: it '
            f'inserts prompt tokens into an MMPretrain VisionTransformer '
            f'(preset `backbone` of a ViT classifier). DETR-family models '
            f'have no ViT token sequence here; use ScaledPrefix for '
            f'prompts in their attention.')

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> 'VPT':
        patch = host.patch_embed.projection.kernel_size[0]
        kwargs.setdefault('patch_size', patch)
        return cls(host.embed_dims, len(host.layers),
                   num_extra_tokens=host.num_extra_tokens, **kwargs)

    def _install(self, host: nn.Module) -> None:
        layers = list(host.layers)
        if self.deep:
            for index, layer in enumerate(layers):
                layer.register_forward_pre_hook(
                    functools.partial(self._insert, index))
                layer.register_forward_hook(self._drop)
        else:
            layers[0].register_forward_pre_hook(
                functools.partial(self._insert, 0))
            layers[-1].register_forward_hook(self._drop)

    # hooks are bound methods (partials of them): a deepcopy of the model
    # (e.g. an EMA copy) then calls the copied tuner, not this one
    def _insert(self, index: int, layer, args):
        x = args[0]
        k = self.num_extra_tokens
        prompts = self.prompts[index].to(x.dtype).expand(x.shape[0], -1, -1)
        return (torch.cat([x[:, :k], prompts, x[:, k:]], dim=1),
                ) + tuple(args[1:])

    def _drop(self, layer, args, output):
        k = self.num_extra_tokens
        return torch.cat([output[:, :k], output[:, k + self.num_prompts:]],
                         dim=1)

    def describe(self) -> Dict[str, object]:
        return dict(num_prompts=self.num_prompts,
                    mode='deep' if self.deep else 'shallow')
