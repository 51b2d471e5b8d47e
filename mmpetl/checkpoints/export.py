"""Export a tuned model as a plain MMDetection/MMPretrain checkpoint.

The base and a tuner checkpoint are loaded into the ``PETLModel`` the config
builds, every tuner that can merge is merged by
:meth:`mmpetl.models.PETLModel.merge_for_deploy` (LoRA into its host weights;
prefix re-parametrisations folded), and the inner model's own keys are
written: stock ``mmdet``/``mmpretrain`` load the file into the inner model's
config without mmpetl. Tuners that add computation no vanilla module holds
(adapters, prefixes, U-Tuners, VPT, UniPT) cannot be exported this way: the
export is refused, naming them.
"""
from typing import Dict, Optional

import torch.nn as nn

from mmpetl.utils import atomic_save, load_checkpoint_file
from .apply import load_tuner_state
from .base import check_base, state_dict_of
from .format import MARKER, load_tuner_checkpoint

__all__ = ['export_checkpoint', 'build_tuned_model', 'NotMergeableError']


class NotMergeableError(TypeError):
    """Tuners that cannot be folded into a plain model."""


def build_tuned_model(model_cfg: Dict, base: Dict,
                      tuner: Optional[Dict] = None,
                      tuner_source: str = 'tuner checkpoint',
                      skip_other_shapes: Optional[bool] = None) -> nn.Module:
    """A ``PETLModel`` from its config, loaded with a base checkpoint dict
    (and a tuner checkpoint dict, already checked against the base); eval.

    Args:
        model_cfg: the ``PETLModel`` config.
        base: the loaded base checkpoint.
        tuner: a loaded tuner checkpoint, or None.
        tuner_source: the tuner's file, for messages.
        skip_other_shapes: leave base tensors whose shape differs from the
            model's (a head with other classes) out; default: when a tuner
            is given (its heads replace them).
    """
    from mmengine.registry import MODELS
    model = MODELS.build(model_cfg)
    own = model.state_dict()
    state = state_dict_of(base)
    if skip_other_shapes is None:
        skip_other_shapes = tuner is not None
    if skip_other_shapes:  # trained heads replace the base's classes
        state = {k: v for k, v in state.items()
                 if k in own and own[k].shape == v.shape}
    model.load_state_dict(state, strict=False)
    if tuner is not None:
        load_tuner_state(model, tuner, tuner_source)
    return model.eval()


def export_checkpoint(model_cfg: Dict, base_path: str, tuner_path: str,
                      out_path: Optional[str] = None,
                      force: bool = False) -> Dict:
    """base + tuners -> a plain checkpoint of the inner model.

    Args:
        model_cfg: the ``PETLModel`` config the tuners were trained with.
        base_path: the base checkpoint.
        tuner_path: the tuner checkpoint.
        out_path: where to write it (atomic); None: only return it.
        force: accept a base with other weights of the same architecture.

    Returns:
        dict: ``{'state_dict', 'meta'}``; ``meta['mmpetl_export']`` lists
        the merged tuners.

    Raises:
        NotMergeableError: a tuner adds computation beside the base model.
    """
    base = load_checkpoint_file(base_path)
    tuner = load_tuner_checkpoint(tuner_path)
    check_base(tuner, base_path, force)
    model = build_tuned_model(model_cfg, base, tuner, tuner_path)
    report = model.merge_for_deploy()
    if report['unmerged']:
        kinds = sorted({type(t).__name__ for n, t in model.tuner_modules()
                        if n in report['unmerged']})
        raise NotMergeableError(
            f'cannot export {tuner_path} as a plain model: '
            f'{len(report["unmerged"])} tuners ({", ".join(kinds)}; first: '
            f'{report["unmerged"][:3]}) add computation that no vanilla '
            f'module holds; only LoRA merges into the base weights. Keep '
            f'base + tuner checkpoint (tools/test.py --tuner), or write one '
            f'mmpetl checkpoint with tools/model_converters/apply_tuner.py.')
    tuner_keys = tuple(n + '.' for n, _ in model.tuner_modules())
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if not k.startswith(tuner_keys)}
    meta = dict(base.get('meta', {}) or {})
    meta['mmpetl_export'] = dict(
        {k: v for k, v in tuner['meta'].items() if k != MARKER},
        merged=report['merged'], folded=report['folded'])
    result = {'state_dict': state, 'meta': meta}
    if out_path:
        atomic_save(result, out_path)
    return result
