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

from mmengine.hooks import Hook

from mmpetl.models.health import STAT_KEYS, TunerProbe
from mmpetl.registry import HOOKS
from mmpetl.utils import unwrap_model

__all__ = ['TunerHealthHook']


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
        self._probe = None
        self._warned = set()
        self._active = False

    def before_train(self, runner) -> None:
        self._probe = TunerProbe(runner.model)

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        step = runner.iter + 1
        self._active = step == 1 or step % self.interval == 0
        if self._active:
            self._probe.start()

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        if not self._active:
            return
        self._active = False
        step = runner.iter + 1
        per_tuner, per_type = self._probe.finish()
        scalars = {f'tuner_layer/{name}/{key}': value
                   for name, stats in per_tuner.items()
                   for key, value in stats.items()}
        parts = []
        for kind, stats in sorted(per_type.items()):
            text = []
            for key in STAT_KEYS:
                values = stats.get(key)
                if not values:
                    continue
                scalars[f'tuner/{kind}/{key}'] = sum(values) / len(values)
                text.append(f'{key} {sum(values) / len(values):.3g} '
                            f'[{min(values):.3g}, {max(values):.3g}]')
            parts.append(f'{kind} (x{len(stats["update_ratio"])}): ' +
                         ', '.join(text))
        runner.visualizer.add_scalars(scalars, step=step)
        runner.logger.info(f'mmpetl: tuner health at iteration {step}: ' +
                           '; '.join(parts))
        if step >= self.inert_after:
            self._warn_inert(runner, step, per_tuner)

    def _warn_inert(self, runner, step, per_tuner) -> None:
        model = unwrap_model(runner.model)
        by_kind = defaultdict(list)
        for name, stats in per_tuner.items():
            if 'contribution' in stats:
                kind = type(model.get_submodule(name)).__name__
                by_kind[kind].append((name, stats['contribution']))
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
