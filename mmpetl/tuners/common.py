"""What several tuners share: argument checks, activations, host widths."""
import torch.nn as nn
from mmcv.cnn.bricks.transformer import FFN

from .base import TunerHostError

__all__ = ['ACTIVATIONS', 'build_activation', 'check_positive_int',
           'host_width']

ACTIVATIONS = {'relu': nn.ReLU, 'gelu': nn.GELU, 'silu': nn.SiLU}


def build_activation(name: str, tuner: str) -> nn.Module:
    """``nn.ReLU()``/``nn.GELU()``/``nn.SiLU()`` for ``'relu'``/``'gelu'``/
    ``'silu'``; any other name is a ``ValueError`` listing them."""
    if name not in ACTIVATIONS:
        raise ValueError(f'{tuner}: `act` must be one of {list(ACTIVATIONS)},'
                         f' got {name!r}')
    return ACTIVATIONS[name]()


def check_positive_int(name: str, value, tuner: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(
            f'{tuner}: `{name}` must be a positive int, got {value!r}. '
            f'Set e.g. `{name}=8` in the tuner config.')
    return value


def host_width(host: nn.Module) -> int:
    """Feature width d of a module that maps d -> d."""
    if isinstance(host, FFN):
        return host.embed_dims
    if isinstance(host, nn.Linear):
        if host.in_features != host.out_features:
            raise TunerHostError(
                f'a parallel adapter needs a d -> d module; this Linear maps '
                f'{host.in_features} -> {host.out_features}.')
        return host.in_features
    raise TunerHostError(f'cannot read the width of {type(host).__name__}')
