"""Is every tuner pulling its weight? Scales, prefix shares, update sizes.

Every ``interval`` iterations the hook asks each tuner to record, during
that one training forward, how much it changes its host's output
(``contribution`` = ||change|| / ||frozen output||), prefix tuners also the
prefix share ``lam`` (the softmax mass on the prefixes in the joint form;
||branch|| / (||frozen|| + ||branch||) in the parallel form), and compares
every tuner's parameters with the last inspection (update-to-weight ratio
||theta - theta_prev|| / ||theta_prev||). It logs one line per tuner type
and writes every number per tuner (layer) as visualizer scalars
(``vis_data/scalars.json``, TensorBoard or W&B when configured). After
``inert_after`` iterations it warns, once per type, naming the tuners
whose contribution is still below ``inert_threshold``::

    mmpetl: DeformablePrefix branch inert in 6 of 6
    MultiScaleDeformableAttention layers (contribution < 1e-03 after 200
    iterations): ...

Nothing is synchronised with the device on other iterations.
"""
from collections import defaultdict
from typing import Dict, List

import torch
from mmengine.hooks import Hook

from mmpetl.registry import HOOKS
from mmpetl.tuners import BaseTuner
from mmpetl.utils import unwrap_model

__all__ = ['TunerHealthHook']


def _tuners(model) -> List:
    return [(n, m) for n, m in unwrap_model(model).named_modules()
            if isinstance(m, BaseTuner)]


@HOOKS.register_module()
class TunerHealthHook(Hook):
    """Log tuner health and warn about inert tuners.

    Args:
        interval (int): inspect every ``interval`` training iterations (and
            the first).
        inert_after (int): warn from this iteration on.
        inert_threshold (float): contribution below which a tuner is inert.
    """

    priority = 'LOW'

    def __init__(self, interval: int = 50, inert_after: int = 100,
                 inert_threshold: float = 1e-3) -> None:
        self.interval, self.inert_after = interval, inert_after
        self.inert_threshold = inert_threshold
        self._snapshot: Dict[str, List[torch.Tensor]] = {}
        self._warned = set()
        self._active = False

    def _due(self, runner) -> bool:
        step = runner.iter + 1
        return step == 1 or step % self.interval == 0

    def _params(self, tuner) -> List[torch.Tensor]:
        return [p.detach().clone() for p in tuner.parameters()]

    def before_train(self, runner) -> None:
        self._snapshot = {n: self._params(t) for n, t in _tuners(runner.model)}

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        self._active = self._due(runner)
        if self._active:
            for _, tuner in _tuners(runner.model):
                tuner.recording = True

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not self._active:
            return
        self._active = False
        step = runner.iter + 1
        per_layer, per_type = {}, defaultdict(lambda: defaultdict(list))
        hosts = {}
        for name, tuner in _tuners(runner.model):
            tuner.recording = False
            stats = dict(tuner.last_stats)
            tuner.last_stats = {}
            now = self._params(tuner)
            before = self._snapshot.get(name, now)
            delta = sum(float((a - b).float().norm()**2)
                        for a, b in zip(now, before))**0.5
            scale = max(sum(float(b.float().norm()**2) for b in before)**0.5,
                        sum(float(a.float().norm()**2) for a in now)**0.5,
                        1e-12)
            stats['update_ratio'] = delta / scale
            self._snapshot[name] = now
            kind = type(tuner).__name__
            hosts[name] = kind
            for key, value in stats.items():
                per_layer[f'tuner_layer/{name}/{key}'] = value
                per_type[kind][key].append(value)
        summary = {}
        parts = []
        for kind, stats in sorted(per_type.items()):
            text = []
            for key in ('scale', 'share', 'contribution', 'update_ratio'):
                values = stats.get(key)
                if not values:
                    continue
                mean = sum(values) / len(values)
                summary[f'tuner/{kind}/{key}'] = mean
                text.append(f'{key} {mean:.3g} [{min(values):.3g}, '
                            f'{max(values):.3g}]')
            parts.append(f'{kind} (x{len(next(iter(stats.values())))}): ' +
                         ', '.join(text))
        runner.visualizer.add_scalars(dict(summary, **per_layer), step=step)
        runner.logger.info(f'mmpetl: tuner health at iteration {step}: ' +
                           '; '.join(parts))
        if step >= self.inert_after:
            self._warn_inert(runner, step, hosts, per_layer)

    def _warn_inert(self, runner, step, hosts, per_layer) -> None:
        model = unwrap_model(runner.model)
        by_kind = defaultdict(list)
        for name, kind in hosts.items():
            value = per_layer.get(f'tuner_layer/{name}/contribution')
            if value is not None:
                by_kind[kind].append((name, value))
        for kind, items in by_kind.items():
            inert = [n for n, v in items if v < self.inert_threshold]
            if not inert or kind in self._warned:
                continue
            self._warned.add(kind)
            host = model.get_submodule(inert[0].rpartition('.')[0])
            runner.logger.warning(
                f'mmpetl: {kind} branch inert in {len(inert)} of '
                f'{len(items)} {type(host).__name__} layers (contribution < '
                f'{self.inert_threshold:.0e} after {step} iterations): '
                f'{inert[:4]}{" ..." if len(inert) > 4 else ""}. Its output '
                f'barely changes the frozen model: check its init (a zero '
                f'scale or zero-gradient path), its lr and its weight decay.')
