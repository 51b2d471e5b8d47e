"""Serial (Houlsby) adapter after an FFN's MLP.

With MMCV's ``FFN`` computing ``y = identity + mlp(x)``, the adapter acts
on the MLP's output, before the residual:

    out = identity + m + s * up(act(down(LN(m)))),   m = mlp(x) = y - identity

``up`` and the biases start at zero: exact at init. Parameters as the
parallel adapter: ``2*d*b + b + d`` (+ ``2*d`` LN, + 1 learnable ``s``).
"""
from typing import Dict

from mmcv.cnn.bricks.transformer import FFN

from mmpetl.registry import TUNERS
from .adapter import AdapterBranch, check_positive_int
from .base import BaseTuner

__all__ = ['SerialAdapter']


@TUNERS.register_module()
class SerialAdapter(BaseTuner):
    """Houlsby-style serial adapter on MMCV ``FFN`` modules.

    Args:
        dims (int): FFN width d.
        bottleneck (int): hidden width b.
        scale (float): ``s``; learnable with ``learnable_scale``.
        learnable_scale (bool): learn ``s``.
        layer_norm (bool): LayerNorm on the adapter input.
        act (str): ``'relu'``, ``'gelu'`` or ``'silu'``.
        dropout (float): dropout inside the bottleneck.
    """

    attr_name = 'serial_adapter'
    host_types = (FFN, )

    def __init__(self, dims: int, bottleneck: int = 64, scale: float = 1.0,
                 learnable_scale: bool = False, layer_norm: bool = False,
                 act: str = 'relu', dropout: float = 0.0) -> None:
        super().__init__()
        check_positive_int('bottleneck', bottleneck, type(self).__name__)
        self.dims, self.bottleneck = dims, bottleneck
        self.branch = AdapterBranch(dims, bottleneck, act, layer_norm,
                                    dropout)
        self._init_scale(scale, learnable_scale)

    @classmethod
    def from_host(cls, host: FFN, **kwargs) -> 'SerialAdapter':
        if not host.add_identity:
            raise TypeError('SerialAdapter needs an FFN with add_identity')
        return cls(host.embed_dims, **kwargs)

    def _install(self, host: FFN) -> None:
        host.register_forward_hook(self._hook, with_kwargs=True)

    def _hook(self, host, args, kwargs, output):
        x = args[0] if args else kwargs['x']
        identity = args[1] if len(args) > 1 else kwargs.get('identity')
        if identity is None:
            identity = x
        # the FFN's residual-free output; its dropout_layer is identity in
        # eval and in every config mmpetl ships
        mlp_out = output - identity
        return output + self.scale * self.branch(mlp_out)

    def describe(self) -> Dict[str, object]:
        return dict(bottleneck=self.bottleneck)
