"""Export a tuned model as a plain MMDetection/MMPretrain checkpoint.

The base and a tuner checkpoint are loaded into the ``PETLModel`` the config
builds, every tuner that can merge is merged by
:meth:`mmpetl.models.PETLModel.merge_for_deploy` (LoRA into its host weights;
prefix re-parametrisations folded), and the inner model's own keys are
written: stock ``mmdet``/``mmpretrain`` load the file into the inner model's
config without mmpetl. Tuners that add computation no vanilla module holds
(adapters, prefixes, U-Tuners, VPT, UniPT) cannot be exported this way: the
export is refused, naming them.

:func:`plain_config` writes the config to use with it: the inner detector
(the task's class count, its classes in the datasets' metainfo) without
mmpetl's model wrapper, hooks, optimizer constructor and imports. The
checkpoint's ``meta.dataset_meta.classes`` are the task's, which
``mmdet.apis.init_detector`` reads. A detector whose own modules come from
mmpetl (the demo's ``mmpetl.TorchvisionMobileNetV2`` backbone) still needs
mmpetl to build: the config then keeps ``custom_imports=['mmpetl']`` and
:func:`plain_config` names those types.
"""
import copy
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from mmpetl.tuners import tuner_key_prefixes
from mmpetl.utils import (CheckpointError, atomic_save, atomic_write,
                          dataset_leaves, load_checkpoint_file)
from .apply import load_tuner_state
from .base import check_base, state_dict_of
from .format import MARKER, load_tuner_checkpoint

__all__ = ['export_checkpoint', 'build_tuned_model', 'NotMergeableError',
           'plain_config', 'write_plain_config', 'load_base_state',
           'BaseLoadError']


class NotMergeableError(TypeError):
    """Tuners that cannot be folded into a plain model."""


class BaseLoadError(CheckpointError):
    """A base checkpoint that does not fill the model's frozen tensors."""


def _first(keys: List[str], show: int = 5) -> str:
    more = f' ... and {len(keys) - show} more' if len(keys) > show else ''
    return ', '.join(keys[:show]) + more


def load_base_state(model: nn.Module, state: Dict[str, torch.Tensor],
                    source: str = 'base checkpoint',
                    replaced: Collection[str] = ()) -> None:
    """Load a base checkpoint's tensors into a ``PETLModel``, strictly.

    Every tensor of the model must come from ``state`` with its shape,
    except the tuners' (a base has none: they keep their init) and those in
    ``replaced`` (what a tuner checkpoint or a registered task writes next:
    the trained heads, which may have other shapes). A frozen tensor left
    at its random init would give wrong results without an error.

    Args:
        model: the ``PETLModel``.
        state: the base's tensors by key (:func:`state_dict_of`).
        source: the base's file, for messages.
        replaced: keys that may be missing from ``state`` or differ in
            shape (they are not loaded then).

    Raises:
        BaseLoadError: naming the missing, unexpected and mismatched keys.
    """
    own = model.state_dict()
    tuners = tuner_key_prefixes(model)
    replaced = set(replaced)
    missing = sorted(k for k in own if k not in state and
                     not k.startswith(tuners) and k not in replaced)
    unexpected = sorted(k for k in state if k not in own)
    other = sorted(k for k in state if k in own and k not in replaced and
                   tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unexpected or other:
        lines = []
        if missing:
            lines.append(f'{len(missing)} frozen tensor(s) of the model '
                         f'missing from it: {_first(missing)}')
        if unexpected:
            lines.append(f'{len(unexpected)} tensor(s) the model does not '
                         f'have: {_first(unexpected)}')
        if other:
            shown = [f'{k}: model {tuple(own[k].shape)} vs file '
                     f'{tuple(state[k].shape)}' for k in other]
            lines.append(f'{len(other)} tensor(s) of other shapes: '
                         f'{_first(shown, 3)}')
        raise BaseLoadError(
            f'{source} does not fit the model the config builds:\n  ' +
            '\n  '.join(lines) + '\nThe frozen model would run with '
            'random tensors. Use the base checkpoint of this architecture '
            '(the one the tuners were trained on, with its class count); '
            'only tuner tensors and the trained parts may be absent.')
    model.load_state_dict({k: v for k, v in state.items()
                           if k not in replaced or
                           tuple(own[k].shape) == tuple(v.shape)},
                          strict=False)


def build_tuned_model(model_cfg: Dict, base: Dict,
                      tuner: Optional[Dict] = None,
                      tuner_source: str = 'tuner checkpoint',
                      skip_other_shapes: Optional[bool] = None,
                      base_source: str = 'base checkpoint') -> nn.Module:
    """A ``PETLModel`` from its config, loaded with a base checkpoint dict
    (and a tuner checkpoint dict, already checked against the base); eval.

    The base is loaded strictly (:func:`load_base_state`): only tuner
    tensors, and with ``skip_other_shapes`` the trained parts, may be
    missing from it or (the trained parts) have other shapes.

    Args:
        model_cfg: the ``PETLModel`` config.
        base: the loaded base checkpoint.
        tuner: a loaded tuner checkpoint, or None.
        tuner_source: the tuner's file, for messages.
        skip_other_shapes: let the trained parts (the tuner checkpoint's
            tensors; without one, what the model's ``trainable`` selects,
            which tasks replace) differ from the base (a head with other
            classes); default: when a tuner is given.
        base_source: the base's file, for messages.

    Raises:
        BaseLoadError: the base does not fill the model's frozen tensors.
    """
    from mmengine.registry import MODELS
    model = MODELS.build(model_cfg)
    if skip_other_shapes is None:
        skip_other_shapes = tuner is not None
    replaced = ()
    if skip_other_shapes:  # trained heads replace the base's classes
        replaced = set(tuner['state_dict']) if tuner is not None else set(
            getattr(model, 'trainable_names', ()))
    load_base_state(model, state_dict_of(base), base_source, replaced)
    if tuner is not None:
        load_tuner_state(model, tuner, tuner_source)
    return model.eval()


def export_checkpoint(model_cfg: Dict, base_path: str, tuner_path: str,
                      out_path: Optional[str] = None, force: bool = False,
                      classes: Optional[Sequence[str]] = None) -> Dict:
    """base + tuners -> a plain checkpoint of the inner model.

    Args:
        model_cfg: the ``PETLModel`` config the tuners were trained with.
        base_path: the base checkpoint.
        tuner_path: the tuner checkpoint.
        out_path: where to write it (atomic); None: only return it.
        force: accept a base with other weights of the same architecture.
        classes: the task's class names for ``meta.dataset_meta`` (default:
            the tuner checkpoint's ``meta.classes``; else the base's
            dataset_meta is kept).

    Returns:
        dict: ``{'state_dict', 'meta'}``; ``meta['mmpetl_export']`` lists
        the merged tuners.

    Raises:
        NotMergeableError: a tuner adds computation beside the base model.
    """
    base = load_checkpoint_file(base_path)
    tuner = load_tuner_checkpoint(tuner_path)
    check_base(tuner, base_path, force)
    model = build_tuned_model(model_cfg, base, tuner, tuner_path,
                              base_source=base_path)
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
    tuner_keys = tuner_key_prefixes(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if not k.startswith(tuner_keys)}
    meta = dict(base.get('meta', {}) or {})
    meta['mmpetl_export'] = dict(
        {k: v for k, v in tuner['meta'].items() if k != MARKER},
        merged=report['merged'], folded=report['folded'])
    classes = classes if classes is not None else tuner['meta'].get(
        'classes')
    if classes is not None:  # what mmdet's init_detector names classes by
        meta['dataset_meta'] = dict(classes=tuple(classes))
    result = {'state_dict': state, 'meta': meta}
    if out_path:
        atomic_save(result, out_path)
    return result


_MMPETL_PARAMWISE = ('tuner_lr_mult', 'tuner_follow_keys',
                     'tuner_token_decay_mult')


def _mmpetl_types(obj, where: str = '') -> List[str]:
    """``key: type`` of every ``type='mmpetl.X'`` left in a config."""
    found = []
    if isinstance(obj, dict):
        kind = obj.get('type')
        if isinstance(kind, str) and kind.startswith('mmpetl.'):
            found.append(f'{where or "<root>"}: {kind}')
        for key, value in obj.items():
            found += _mmpetl_types(value, f'{where}.{key}' if where else key)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            found += _mmpetl_types(value, f'{where}[{i}]')
    return found


def _set_classes(dataset: Dict, classes: Tuple[str, ...]) -> None:
    """``metainfo.classes`` of a dataset config (inside wrappers too:
    :func:`~mmpetl.utils.dataset_leaves`)."""
    for _, leaf in dataset_leaves(dataset):
        if isinstance(leaf, dict) and 'type' in leaf and \
                'dataset' not in leaf and 'datasets' not in leaf:
            leaf['metainfo'] = dict(leaf.get('metainfo') or {},
                                    classes=classes)


def plain_config(cfg, classes: Optional[Sequence[str]] = None
                 ) -> Tuple[Dict, List[str]]:
    """The PETL config's plain MMDetection twin, for an exported model.

    Args:
        cfg: the PETL config (an MMEngine ``Config``) the tuners trained
            with.
        classes: the task's class names: the head's ``num_classes`` and
            the datasets' ``metainfo.classes`` become theirs.

    Returns:
        tuple: the config as a dict (``Config(d)`` builds it), and the
        ``key: mmpetl.X`` types it still holds (empty: stock mmdet builds
        it without mmpetl).
    """
    plain = copy.deepcopy(cfg.to_dict() if hasattr(cfg, 'to_dict')
                          else dict(cfg))
    petl = plain['model']
    if str(petl.get('type', '')).endswith('PETLModel'):
        inner = petl['model']
        if petl.get('data_preprocessor') is not None:
            inner.setdefault('data_preprocessor', petl['data_preprocessor'])
        plain['model'] = inner
    if classes is not None:
        classes = tuple(str(c) for c in classes)
        for head in ('bbox_head', 'head'):
            if isinstance(plain['model'].get(head), dict):
                plain['model'][head]['num_classes'] = len(classes)
        for phase in ('train', 'val', 'test'):
            loader = plain.get(f'{phase}_dataloader')
            if isinstance(loader, dict):
                _set_classes(loader.get('dataset'), classes)
    hooks = [h for h in plain.get('custom_hooks') or []
             if not str(h.get('type', '')).startswith('mmpetl.')]
    if hooks:
        plain['custom_hooks'] = hooks
    else:
        plain.pop('custom_hooks', None)
    optim = plain.get('optim_wrapper')
    if isinstance(optim, dict):
        if str(optim.get('constructor', '')).startswith('mmpetl.'):
            del optim['constructor']
        if optim.get('type') == 'mmpetl.AmpOptimWrapper':
            optim['type'] = 'AmpOptimWrapper'
        paramwise = optim.get('paramwise_cfg')
        if isinstance(paramwise, dict):
            for key in _MMPETL_PARAMWISE:
                paramwise.pop(key, None)
    plain.update(load_from=None, resume=False)
    needs = _mmpetl_types(plain)
    imports = plain.pop('custom_imports', None) or {}
    kept = [m for m in imports.get('imports', [])
            if not str(m).split('.')[0] == 'mmpetl']
    if needs:
        kept.append('mmpetl')
    if kept:
        plain['custom_imports'] = dict(imports, imports=kept)
    return plain, needs


def write_plain_config(cfg, path: str,
                       classes: Optional[Sequence[str]] = None) -> List[str]:
    """Write :func:`plain_config` to ``path`` (a ``.py``, atomically);
    returns the mmpetl types it still needs (see there)."""
    from mmengine.config import Config
    plain, needs = plain_config(cfg, classes)
    text = Config(plain).pretty_text

    def write(tmp):
        with open(tmp, 'w') as f:
            f.write(text)

    atomic_write(path, write)
    return needs
