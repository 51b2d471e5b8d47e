"""What every tuner shares: how it attaches to the frozen module it tunes.

A tuner never replaces its host module. It becomes a child of the host under
``attr_name`` (so every key of the base model's state dict stays as it was and
model-zoo checkpoints load unchanged; tuner keys are new keys such as
``encoder.layers.0.ffn.adapter.down.weight``), and it changes the host's
computation in one of two ways:

* additive tuners register a forward hook: ``out = host(x) + delta(x, out)``;
* attention tuners that must act inside the softmax (prefix, fused LoRA) set
  the host's ``forward`` to a re-implementation that uses the host's own
  frozen weights and consults every tuner attached to it.
"""
import functools
from abc import ABCMeta, abstractmethod
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from .routing import batch_dim_of, route_call

__all__ = ['BaseTuner', 'TunerHostError', 'count_params']


class TunerHostError(TypeError):
    """A tuner was pointed at a module it cannot tune."""


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


class BaseTuner(nn.Module, metaclass=ABCMeta):
    """Base class of all tuners.

    Subclasses set ``attr_name`` (the child name on the host) and
    ``host_types`` (the module types they tune), implement
    :meth:`from_host` and :meth:`_install`.

    Attributes:
        lr_mult (float): learning-rate multiplier the PETL optimizer
            constructor applies to this tuner's parameters.
        decay_mult (float): weight-decay multiplier, likewise.
    """

    attr_name: str = 'tuner'
    host_types: Tuple[type, ...] = ()
    #: names of parameters that are learned tokens (prefixes, prompts):
    #: the PETL optimizer constructor exempts them from weight decay
    token_params: Tuple[str, ...] = ()
    #: the tuner computes its part per task group while ``routing`` is set
    #: (mixed-task batches, :mod:`mmpetl.tuners.routing`)
    routable: bool = False
    #: what ``_hook`` reads per sample while routing: the positions of the
    #: host's positional arguments and the names of its keyword arguments
    #: (the host's output always holds samples); every other input reaches
    #: ``_hook`` whole (``spatial_shapes``, ``level_start_index``, masks)
    routed_args: Tuple[int, ...] = (0, )
    routed_kwargs: Tuple[str, ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.lr_mult = 1.0
        self.decay_mult = 1.0
        #: set by TunerHealthHook for the iterations it inspects: the
        #: tuner then fills ``last_stats`` during its forward
        self.recording = False
        self.last_stats: Dict[str, float] = {}
        #: a :class:`~mmpetl.tuners.routing.TaskGroups` during a forward
        #: whose samples belong to several tasks, else None
        self.routing = None

    # -- construction -----------------------------------------------------
    @classmethod
    def host_type_names(cls) -> List[str]:
        return [t.__module__.split('.')[0] + '.' + t.__name__
                for t in cls.host_types]

    @classmethod
    def resolve_hosts(cls, name: str, module: nn.Module,
                      **tuner_kwargs) -> List[Tuple[str, nn.Module]]:
        """Map a matched module to the module(s) this tuner attaches to.

        By default the matched module itself; attention tuners descend from
        a wrapper (e.g. mmcv's ``MultiheadAttention``) to what they tune.
        ``tuner_kwargs`` are the tuner's config arguments.

        Raises:
            TunerHostError: when the module is of no supported type.
        """
        if isinstance(module, cls.host_types):
            return [(name, module)]
        raise TunerHostError(
            f'{cls.__name__} cannot tune `{name}` of type '
            f'{type(module).__module__}.{type(module).__name__}; it tunes '
            f'{", ".join(cls.host_type_names())}. Point `targets`/`presets` '
            f'of this tuner at modules of those types.')

    @classmethod
    def from_host(cls, host: nn.Module, **kwargs) -> 'BaseTuner':
        """Build a tuner whose shapes fit ``host``."""
        raise TypeError(f'{cls.__name__} is not built from a host by '
                        f'itself (another tuner\'s from_host builds it)')

    # -- attaching --------------------------------------------------------
    def attach(self, host: nn.Module) -> None:
        """Become ``host.<attr_name>`` and hook into the host's forward."""
        if hasattr(host, self.attr_name):
            raise TunerHostError(
                f'{type(host).__name__} already has an attribute '
                f'`{self.attr_name}`: two tuners of the same kind target the '
                f'same module (check overlapping `targets`/`presets`).')
        host.add_module(self.attr_name, self)
        self._install(host)

    @abstractmethod
    def _install(self, host: nn.Module) -> None:
        """Hook into ``host``'s computation (hook or tuned forward)."""

    def _init_scale(self, value: float, learnable: bool) -> None:
        """``self.scale``: a learnable scalar, or a fixed (saved) one."""
        tensor = torch.tensor(float(value))
        if learnable:
            self.scale = nn.Parameter(tensor)
        else:
            self.register_buffer('scale', tensor)

    # -- mixed-task batches ------------------------------------------------
    def route(self, fn: Callable, args: Tuple, dim: int,
              kwargs: Optional[Dict] = None, *, in_dims,
              kwarg_dims=None):
        """``fn(*args, **kwargs)`` once per task group of ``routing``, with
        that task's tensors in this tuner, stitched in sample order along
        the batch dimension ``dim`` of its outputs; ``in_dims`` /
        ``kwarg_dims`` declare which arguments hold samples
        (:func:`~mmpetl.tuners.routing.route_call`); routing is off inside
        the calls."""
        groups, self.routing = self.routing, None
        try:
            return route_call(fn, args, kwargs, groups, self, dim,
                              type(self).__name__, in_dims=in_dims,
                              kwarg_dims=kwarg_dims)
        finally:
            self.routing = groups

    def routed_hook(self, host: nn.Module, *args):
        """The forward hook tuners register: ``self._hook(host, *args)``,
        per task group while routing. ``args`` are the hook's ``(inputs,
        output)`` or ``(inputs, kwargs, output)``; the inputs named by
        ``routed_args`` / ``routed_kwargs`` and the output are cut along
        ``host``'s batch dimension
        (:func:`~mmpetl.tuners.routing.batch_dim_of`), the rest is passed
        whole."""
        if self.routing is None:
            return self._hook(host, *args)
        dim = batch_dim_of(host)
        inputs = tuple(dim if i in self.routed_args else None
                       for i in range(max(self.routed_args, default=-1) + 1))
        if len(args) == 3:  # registered with_kwargs
            in_dims = (inputs, {k: dim for k in self.routed_kwargs}, dim)
        else:
            in_dims = (inputs, dim)
        return self.route(functools.partial(self._hook, host), args, dim,
                          in_dims=in_dims)

    # -- health -----------------------------------------------------------
    @torch.no_grad()
    def record_change(self, base: torch.Tensor, change: torch.Tensor,
                      **extra) -> None:
        """``last_stats``: ``contribution`` = ||change|| / ||base||, the
        scale ``s`` when the tuner has one, and ``extra`` values."""
        base_norm = base.detach().float().norm()
        change_norm = change.detach().float().norm()
        stats = dict(contribution=change_norm / base_norm.clamp_min(1e-12),
                     **extra)
        scale = getattr(self, 'scale', None)
        if torch.is_tensor(scale):
            stats['scale'] = scale.detach().float()
        self.last_stats = {k: float(v) for k, v in stats.items()}

    def add_change(self, output: torch.Tensor,
                   change: torch.Tensor) -> torch.Tensor:
        """``output + change`` of an additive tuner (recording the health
        stats when asked)."""
        if self.recording:
            self.record_change(output, change)
        return output + change

    # -- deployment -------------------------------------------------------
    def merge(self) -> bool:
        """Fold this tuner into its host's frozen weights for inference.

        Returns:
            bool: True when the tuner now adds no computation (LoRA); the
            default tuner cannot merge and returns False.
        """
        return False

    def unmerge(self) -> None:
        """Undo :meth:`merge` (nothing to undo by default)."""

    def fold_reparam(self) -> bool:
        """Replace a training-time re-parametrisation by what it produces
        (same outputs, fewer parameters). Returns True if it folded."""
        return False

    # -- reporting --------------------------------------------------------
    def num_train_params(self) -> int:
        """Parameters trained (all of this tuner's parameters)."""
        return count_params(self)

    def num_deploy_params(self) -> int:
        """Parameters needed at inference (differs when reparametrised)."""
        return count_params(self)

    def describe(self) -> Dict[str, object]:
        """Short hyper-parameter summary for the injection table."""
        return {}
