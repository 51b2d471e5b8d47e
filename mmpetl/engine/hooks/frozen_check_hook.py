"""Fail loudly if a frozen parameter moved during training.

Frozen weights are the shared base of every tuner checkpoint: if one moves
(a module un-frozen by hand, a buggy optimizer, weight decay applied to a
frozen tensor) the tuner checkpoints no longer fit the base checkpoint.
Before training (after loading/resuming) each frozen parameter's bytes are
fingerprinted (SHA-1, so bit-identical is what is checked and nothing is
copied); after training they are fingerprinted again and compared.

Before training it also refuses weights that hold NaN or Inf (a corrupt
base, or one saved from a model whose ``init_weights()`` never ran: mmdet
allocates some tensors uninitialised and fills them only there). Without
this check the first sign is an opaque error deep in the Hungarian matcher.
"""
import hashlib
from typing import Dict, List

import torch
from mmengine.hooks import Hook

from mmpetl.registry import HOOKS
from mmpetl.utils import unwrap_model
from mmpetl.utils.mmengine_private import runner_load_from, runner_resumes

__all__ = [
    'FrozenCheckHook', 'fingerprint_frozen', 'FrozenParamsChanged',
    'NonFiniteWeightsError', 'non_finite_tensors'
]


class FrozenParamsChanged(RuntimeError):
    pass


class NonFiniteWeightsError(ValueError):
    pass


def non_finite_tensors(model) -> List[str]:
    """Names of floating parameters and buffers holding NaN or Inf."""
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return [name for name, t in tensors
            if t.is_floating_point() and not torch.isfinite(t).all()]


def _digest(tensor: torch.Tensor) -> str:
    data = tensor.detach().cpu().contiguous()
    return hashlib.sha1(data.view(torch.uint8).numpy().tobytes() if
                        data.numel() else b'').hexdigest()


def fingerprint_frozen(model) -> Dict[str, str]:
    return {
        name: _digest(p)
        for name, p in model.named_parameters() if not p.requires_grad
    }


@HOOKS.register_module()
class FrozenCheckHook(Hook):
    """Check that every frozen parameter is bit-identical after training."""

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._before: Dict[str, str] = {}

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        bad = non_finite_tensors(model)
        if bad:
            source = runner_load_from(runner) or (
                'the resumed checkpoint' if runner_resumes(runner)
                else 'no checkpoint (load_from is None)')
            raise NonFiniteWeightsError(
                f'{len(bad)} model tensors hold NaN or Inf before training '
                f'(first: {bad[:5]}); weights loaded from: {source}. The '
                f'checkpoint is corrupt, or it was saved from a model whose '
                f'init_weights() never ran (mmdet leaves some tensors '
                f'uninitialised until then): save the base again from a '
                f'trained or initialised model.')
        self._before = fingerprint_frozen(model)
        runner.logger.info(f'mmpetl: fingerprinted {len(self._before)} '
                           f'frozen tensors')

    def after_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        named = dict(model.named_parameters())
        moved = [n for n, d in self._before.items()
                 if _digest(named[n]) != d]
        unfrozen = [n for n in self._before if named[n].requires_grad]
        if moved or unfrozen:
            raise FrozenParamsChanged(
                f'{len(moved)} frozen parameters changed during training '
                f'(first: {moved[:5]}); {len(unfrozen)} were un-frozen '
                f'(first: {unfrozen[:5]}). Frozen weights must stay equal '
                f'to the base checkpoint: declare parts that should train '
                f'in the model\'s `trainable` instead of setting '
                f'requires_grad by hand.')
        runner.logger.info(f'mmpetl: all {len(self._before)} frozen tensors '
                           f'bit-identical after training')
