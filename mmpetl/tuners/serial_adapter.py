"""Serial (Houlsby) adapter after an FFN's MLP.

With MMCV's ``FFN`` computing ``y = identity + mlp(x)``, the adapter acts
on the MLP's output, before the residual:

    out = identity + m + s * up(act(down(LN(m)))),   m = mlp(x) = y - identity

``up`` and the biases start at zero: exact at init. Parameters as the
parallel adapter: ``2*d*b + b + d`` (+ ``2*d`` LN, + 1 learnable ``s``).
"""
from mmcv.cnn.bricks.transformer import FFN

from mmpetl.registry import TUNERS
from .adapter import ParallelAdapter

__all__ = ['SerialAdapter']


@TUNERS.register_module()
class SerialAdapter(ParallelAdapter):
    """Houlsby-style serial adapter on MMCV ``FFN`` modules.

    Same arguments and branch as :class:`ParallelAdapter`; only where the
    branch reads from differs (the MLP's output instead of the FFN input).
    """

    attr_name = 'serial_adapter'
    routed_args = (0, 1)  # what _hook reads per sample: x, identity
    routed_kwargs = ('x', 'identity')
    host_types = (FFN, )

    @classmethod
    def from_host(cls, host: FFN, **kwargs) -> 'SerialAdapter':
        if not isinstance(host, FFN) or not host.add_identity:
            raise TypeError('SerialAdapter needs an MMCV FFN with '
                            'add_identity')
        return cls(host.embed_dims, **kwargs)

    def _hook(self, host, args, kwargs, output):
        x = args[0] if args else kwargs['x']
        identity = args[1] if len(args) > 1 else kwargs.get('identity')
        if identity is None:
            identity = x
        # the FFN's residual-free output; its dropout_layer is identity in
        # eval and in every config mmpetl ships
        mlp_out = output - identity
        return self.add_change(output, self.scale * self.branch(mlp_out))
