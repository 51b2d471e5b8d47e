"""Training: non-finite losses and frozen weights that move or hold
NaN."""
from types import SimpleNamespace

import torch

from mmpetl.engine.hooks.frozen_check_hook import (FrozenParamsChanged,
                                                   NonFiniteWeightsError)
from mmpetl.engine.hooks.non_finite_loss_hook import NonFiniteLossError

from .common import Case


def _non_finite_loss(tmp):
    from mmpetl.engine.hooks import NonFiniteLossHook
    runner = SimpleNamespace(
        iter=41, rank=0, message_hub=SimpleNamespace(
            get_info=lambda key: 'work_dirs/et/iter_40.pth'))
    outputs = dict(loss_cls=torch.tensor(float('nan')),
                   loss_bbox=torch.tensor(0.25),
                   loss=torch.tensor(float('nan')))
    NonFiniteLossHook().after_train_iter(runner, 0, None, outputs)


def _frozen_check(tamper, load=None):
    """FrozenCheckHook around a 'training' that only runs ``tamper`` on a
    model whose first layer is frozen (``load`` edits it before training,
    as loading a checkpoint would)."""
    from mmpetl.engine.hooks import FrozenCheckHook
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    model[0].requires_grad_(False)
    if load:
        load(model)
    runner = SimpleNamespace(model=model, _load_from='base.pth',
                             logger=SimpleNamespace(info=lambda msg: None))
    hook = FrozenCheckHook()
    hook.before_train(runner)
    tamper(model)
    hook.after_train(runner)


def _frozen_moved(tmp):
    def tamper(model):
        with torch.no_grad():  # e.g. weight decay applied to a frozen tensor
            model[0].weight.mul_(0.999)
    _frozen_check(tamper)


def _frozen_unfrozen(tmp):
    # un-frozen by hand mid-run
    _frozen_check(lambda model: model[0].bias.requires_grad_(True))


def _non_finite_base(tmp):
    def load(model):  # a base saved before init_weights() filled it
        with torch.no_grad():
            model[0].weight[0, 0] = float('nan')
    _frozen_check(lambda model: None, load)


TRAINING_CASES = [
    Case('non-finite-loss', 'training',
         'a NaN loss (lr too high, bad data) at iteration 42',
         _non_finite_loss, NonFiniteLossError,
         r"non-finite loss at iteration 42 on rank\(s\) \[0\]; on this rank "
         r"\(0\): \{'loss_cls': nan, 'loss': nan\}.*last checkpoint is "
         r"work_dirs/et/iter_40\.pth"),
    Case('frozen-moved', 'training',
         'a frozen weight changed during training (weight decay on a '
         'frozen tensor)', _frozen_moved, FrozenParamsChanged,
         r"1 frozen parameters changed during training \(first: "
         r"\['0\.weight'\]\).*`trainable`"),
    Case('frozen-unfrozen', 'training',
         'a frozen parameter un-frozen by hand (`requires_grad_(True)`)',
         _frozen_unfrozen, FrozenParamsChanged,
         r"1 were un-frozen \(first: \['0\.bias'\]\)"),
    Case('non-finite-base', 'training',
         'base weights holding NaN (corrupt file, or saved before '
         '`init_weights()` filled mmdet\'s uninitialised tensors)',
         _non_finite_base, NonFiniteWeightsError,
         r"1 model tensors hold NaN or Inf before training \(first: "
         r"\['0\.weight'\]\); weights loaded from: base\.pth.*"
         r"init_weights\(\)"),
]
