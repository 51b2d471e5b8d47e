"""What every prefix tuner shares: the prefixes, their form, ``s`` and the
health statistics; the host-side computation is each subclass's
(:mod:`~mmpetl.tuners.prefix.scaled`, :mod:`~mmpetl.tuners.prefix.deformable`).
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..base import BaseTuner, TunerHostError
from ..common import check_positive_int
from .inits import PREFIX_INITS, ActivationInit, init_prefixes

__all__ = ['PrefixBase', 'PREFIX_FORMS']

#: every form a prefix tuner knows; each host class accepts its own subset
#: (``forms``): attentions with keys ``joint``, ``parallel``, ``reweight``,
#: ``reweight+parallel``; deformable attention ``parallel``, ``steer``,
#: ``steer+parallel`` (see :mod:`mmpetl.tuners.prefix`)
PREFIX_FORMS = ('joint', 'parallel', 'reweight', 'reweight+parallel',
                'steer', 'steer+parallel')


class PrefixBase(ActivationInit, BaseTuner):
    """Prefixes ``P_k, P_v``, their init and the scale ``s``; the host-side
    computation is the subclass's.

    Args:
        dims (int): embedding width d of the attention.
        num_heads (int): heads; ``d`` must divide evenly.
        num_prefix (int): prefix length l (ETTA: ~50).
        form (str): ``'joint'`` or ``'parallel'`` (see
            :mod:`mmpetl.tuners.prefix`).
        init (str): ``'random'``, ``'scaled'`` or ``'activations'``
            (:mod:`mmpetl.tuners.prefix.inits`).
        scale (float): initial ``s``.
        learnable_scale (bool): learn ``s``; ``False`` with ``scale=1`` is
            standard prefix tuning.
        init_std (float): std of ``'random'``'s normal init.
        key_std (float): std of ``P_k`` under ``'scaled'`` (the host's
            ``from_host`` derives it from the key projection).
        key_dims (int, optional): width of ``P_k`` when the host's logits
            are not ``d`` wide (conditional cross-attention: ``2d``);
            None: ``dims``.
    """

    attr_name = 'prefix'
    #: learned tokens (no weight decay by default, see the optimizer)
    token_params = ('prefix_k', 'prefix_v', 'embedding', 'prefix_q',
                    'prefix_steer')
    forms: Tuple[str, ...] = PREFIX_FORMS
    routable = True

    def __init__(self, dims: int, num_heads: int, num_prefix: int = 50,
                 form: str = 'parallel', init: str = 'scaled',
                 scale: float = 1.0, learnable_scale: bool = True,
                 init_std: float = 0.02, key_std: float = 1.0,
                 key_dims: Optional[int] = None) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_int('num_prefix', num_prefix, name)
        self.check_options(form, init)
        key_dims = dims if key_dims is None else key_dims
        for width in (dims, key_dims):
            if width % num_heads:
                raise ValueError(f'{name}: {width} dims do not split over '
                                 f'{num_heads} heads')
        self.dims, self.num_heads, self.num_prefix = dims, num_heads, \
            num_prefix
        self.key_dims = key_dims
        self.form, self.init = form, init
        self.prefix_k = nn.Parameter(torch.empty(num_prefix, key_dims))
        self.prefix_v = nn.Parameter(torch.empty(num_prefix, dims))
        init_prefixes(self.prefix_k, self.prefix_v, init, init_std, key_std)
        self._init_scale(scale, learnable_scale)
        #: True until init='activations' has its data (TunerInitHook)
        self.needs_data_init = init == 'activations'

    @classmethod
    def check_options(cls, form: str, init: str,
                      host: Optional[nn.Module] = None) -> None:
        """Refuse an unknown ``form``/``init``, naming the valid choices
        (and the host type when known)."""
        where = cls.__name__ if host is None else (
            f'{cls.__name__} on {type(host).__module__}.'
            f'{type(host).__name__}')
        if form not in PREFIX_FORMS:
            raise ValueError(f'{where}: unknown form={form!r}; valid forms: '
                             f'{list(cls.forms)}')
        if init not in PREFIX_INITS:
            raise ValueError(f'{where}: unknown init={init!r}; valid inits: '
                             f'{list(PREFIX_INITS)}')
        if form not in cls.forms:
            raise TunerHostError(
                f'prefix form={form!r} does not apply to {where}; valid '
                f'forms there: {list(cls.forms)} (attentions with keys and '
                f'deformable attention, which has none, take different '
                f'forms: see mmpetl.tuners.prefix). Use one of those, or '
                f'point the form={form!r} tuner only at attentions that '
                f'take it.')

    # -- prefixes -----------------------------------------------------------
    def key_values(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(P_k, P_v)``: ``(l, key_dims)`` and ``(l, d)`` (``s`` not
        applied)."""
        return self.prefix_k, self.prefix_v

    def heads(self, prefix: torch.Tensor, bsz: int,
              dtype: torch.dtype) -> torch.Tensor:
        """``(l, d)`` -> ``(bsz, heads, l, d_h)`` (a view)."""
        return prefix.to(dtype).view(self.num_prefix, self.num_heads,
                                     -1).transpose(0, 1).unsqueeze(0).expand(
                                         bsz, -1, -1, -1)

    def _check_ready(self) -> None:
        if self.needs_data_init and self.training:
            raise RuntimeError(
                f"{type(self).__name__}(init='activations') has not been "
                f'initialised from activations: mmpetl.TunerInitHook does '
                f'it before the first training step (it is in '
                f'configs/_base_/petl_runtime.py); outside a Runner call '
                f'mmpetl.models.init_prefixes_from_activations(model, '
                f'batches) first.')

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint that holds the prefixes (tuner checkpoint, resume)
        # replaces any data-dependent init
        if prefix + 'prefix_k' in state_dict:
            self.needs_data_init = False
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # -- health statistics --------------------------------------------------
    @torch.no_grad()
    def record_share(self, frozen: torch.Tensor, change: torch.Tensor,
                     share: Optional[torch.Tensor] = None) -> None:
        """Health stats: contribution, ``s`` and the prefix share ``lam``
        (given: the joint form's softmax mass; else the parallel form's
        ||branch|| / (||frozen|| + ||branch||))."""
        if share is None:
            frozen_norm = frozen.detach().float().norm()
            change_norm = change.detach().float().norm()
            share = change_norm / (frozen_norm + change_norm).clamp_min(
                1e-12)
        self.record_change(frozen, change, share=share)

    def num_deploy_params(self) -> int:
        return self.num_prefix * (self.key_dims + self.dims) + int(
            isinstance(self.scale, nn.Parameter))

    def describe(self) -> Dict[str, object]:
        out = dict(num_prefix=self.num_prefix, form=self.form,
                   init=self.init)
        if self.key_dims != self.dims:  # conditional cross-attention
            out['key_dims'] = self.key_dims
        return out
