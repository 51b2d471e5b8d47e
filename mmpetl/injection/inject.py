"""inject(): attach the tuners a config lists to a built (and initialised) model.

A tuner config::

    dict(type='ParallelAdapter',          # a name in mmpetl's TUNERS
         presets=['ffn'],                 # and/or targets=<regex | [names]>
         target_types=None,               # optional class-name filter
         exclude=None,                    # regex | [names] to skip
         lr_mult=1.0, decay_mult=1.0,     # read by the optimizer constructor
         **tuner_args)                    # e.g. bottleneck=64

Matching runs on the names of the *base* model's modules (tuners added by an
earlier entry are never targets). Every failure names the problem and the
fix: an unknown tuner lists the registered ones, a target list that matches
nothing lists the nearest module names, a preset that matches nothing lists
the model's attention and FFN types and the presets that do match, a wrong
argument lists the accepted ones.
"""
import difflib
import inspect
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch.nn as nn

from mmpetl.registry import TUNERS
from mmpetl.tuners import BaseTuner
from mmpetl.utils import class_names
from .matching import name_matches, nearest_names, select_names
from .presets import detect_arch, preset_regex, unmatched_preset_message

__all__ = ['InjectedTuner', 'inject', 'get_tuner_cls']

_SELECT_KEYS = ('presets', 'targets', 'target_types', 'exclude')


@dataclass
class InjectedTuner:
    """One tuner placed on one module."""
    name: str          # the host module's name in the model
    host_type: str
    tuner_type: str    # the config's type
    tuner: BaseTuner

    @property
    def num_params(self) -> int:
        return self.tuner.num_train_params()


def get_tuner_cls(type_name: str):
    if not isinstance(type_name, str):
        raise TypeError(f'tuner `type` must be a string, got {type_name!r}')
    name = type_name.split('.', 1)[1] if type_name.startswith(
        'mmpetl.') else type_name
    cls = TUNERS.get(name)
    if cls is None:
        known = sorted(TUNERS.module_dict)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.4)
        hint = f' Did you mean {close}?' if close else ''
        raise KeyError(
            f'unknown tuner type `{type_name}`.{hint} Registered tuners: '
            f'{known}.')
    return cls


_SHAPE_ARGS = ('self', 'dims', 'num_heads', 'in_features', 'out_features',
               'embed_dim', 'key_dims')


def _check_args(cls, type_name: str, args: Dict) -> None:
    """Reject misspelt tuner arguments before anything is built."""
    target = getattr(cls, 'config_args_of', cls)
    params = inspect.signature(target.__init__).parameters
    accepted = [p for p in params if p not in _SHAPE_ARGS and
                params[p].kind is not params[p].VAR_KEYWORD]
    accepted += list(getattr(cls, 'extra_config_args', ()))
    unknown = [k for k in args if k not in accepted]
    if unknown:
        raise TypeError(
            f'{type_name} got unknown argument(s) {unknown}; it accepts '
            f'{accepted} plus {list(_SELECT_KEYS)}, lr_mult, decay_mult.')


def _type_matches(module: nn.Module, target_types: Sequence[str]) -> bool:
    names = class_names(module) + class_names(module, qualified=True)
    return any(t in names for t in target_types)


def inject(model: nn.Module, tuner_cfgs: Sequence[Dict],
           arch: Optional[str] = None) -> List[InjectedTuner]:
    """Attach tuners to ``model`` in place.

    Args:
        model: the inner mmdet/mmpretrain model, already initialised.
        tuner_cfgs: tuner configs as described in the module docstring.
        arch: architecture for ``presets``; detected when None.

    Returns:
        One :class:`InjectedTuner` per attached tuner, in model order.
    """
    base_modules = dict(model.named_modules())
    names = [n for n in base_modules if n]
    records: List[InjectedTuner] = []
    for index, raw in enumerate(tuner_cfgs):
        cfg = dict(raw)
        if 'type' not in cfg:
            raise KeyError(f'tuner config #{index} has no `type`: {raw}')
        type_name = cfg.pop('type')
        cls = get_tuner_cls(type_name)
        presets = cfg.pop('presets', None)
        targets = cfg.pop('targets', None)
        target_types = cfg.pop('target_types', None)
        exclude = cfg.pop('exclude', None)
        lr_mult = cfg.pop('lr_mult', 1.0)
        decay_mult = cfg.pop('decay_mult', 1.0)
        _check_args(cls, type_name, cfg)
        if presets is None and targets is None and target_types is None:
            raise ValueError(
                f'{type_name}: say where it goes with `presets` (e.g. '
                f"['ffn', 'attn']), `targets` (a regex or module names) or "
                f'`target_types` (module class names).')
        if isinstance(presets, str):
            presets = [presets]
        patterns = []
        if presets:
            model_arch = arch or detect_arch(model)
            patterns.append(preset_regex(model_arch, presets))
            for preset in presets:  # each must find something
                regex = preset_regex(model_arch, [preset])
                if not any(name_matches(n, regex) for n in names):
                    raise ValueError(
                        f'{type_name}: ' + unmatched_preset_message(
                            model, model_arch, preset))
        if targets is not None:
            patterns.append(targets)
        matched = [
            n for n in select_names(names, None, exclude)
            if (not patterns or any(name_matches(n, p) for p in patterns))
            and (target_types is None or _type_matches(
                base_modules[n], target_types))
        ]
        if not matched:
            wanted = targets if targets is not None else (
                presets or target_types)
            raise ValueError(
                f'{type_name}: no module matched presets={presets}, '
                f'targets={targets!r}, target_types={target_types}, '
                f'exclude={exclude!r}. Nearest module names: '
                f'{nearest_names(wanted, names)}. A string target is a '
                f'full-name regex; a list matches exact names or dotted '
                f'suffixes.')
        for name in matched:
            for host_name, host in cls.resolve_hosts(name, base_modules[name],
                                                     **cfg):
                tuner = cls.from_host(host, **cfg)
                tuner.lr_mult, tuner.decay_mult = float(lr_mult), float(
                    decay_mult)
                tuner.attach(host)
                records.append(
                    InjectedTuner(host_name, type(host).__name__, type_name,
                                  tuner))
    return records
