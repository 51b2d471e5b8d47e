"""Tuner health probes: scales, prefix shares, contributions, update sizes.

A :class:`TunerProbe` asks every tuner of a model to record, during one
forward, how much it changes its host's output (``contribution`` =
||change|| / ||frozen output||; prefix tuners also the prefix share ``lam``;
tuners with a scale ``s`` its value), and compares every tuner's parameters
with the previous probe (``update_ratio`` = ||theta - theta_prev|| /
max(||theta_prev||, ||theta||)). :class:`~mmpetl.engine.hooks.TunerHealthHook`
runs one every few training iterations; benchmark loops without a Runner
use it directly.
"""
from collections import defaultdict
from typing import Dict, List, Tuple

import torch
import torch.nn as nn

from mmpetl.tuners import BaseTuner, iter_tuners
from mmpetl.utils import unwrap_model

__all__ = ['TunerProbe', 'STAT_KEYS']

#: what the health hook's summary line averages per tuner type (a key only
#: where a tuner records it): the prefix forms' second scale and logit
#: change (reweight), the deformable steering's scale, offset change,
#: attention-weight change and contribution (steer)
STAT_KEYS = ('scale', 'share', 'contribution', 'update_ratio', 'scale_v',
             'logit_change', 'steer_scale', 'steer_offset_rms',
             'steer_weight_tv', 'steer_contribution')


def _norm(tensors) -> float:
    return sum(float(t.float().norm()**2) for t in tensors)**0.5


class TunerProbe:
    """Record tuner statistics on chosen forwards.

    Args:
        model: the tuned model (a model wrapper is unwrapped).
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = unwrap_model(model)
        self._snapshot = {n: self._params(t) for n, t in self.tuners()}

    def tuners(self) -> List[Tuple[str, BaseTuner]]:
        return list(iter_tuners(self.model))

    @staticmethod
    def _params(tuner: BaseTuner) -> List[torch.Tensor]:
        return [p.detach().clone() for p in tuner.parameters()]

    def start(self) -> None:
        """The next forward records (call before it)."""
        for _, tuner in self.tuners():
            tuner.recording = True

    def finish(self) -> Tuple[Dict[str, Dict[str, float]],
                              Dict[str, Dict[str, List[float]]]]:
        """Stop recording; the statistics of the forward since start().

        Returns:
            tuple: ``{tuner name: {stat: value}}`` and ``{tuner type:
            {stat: [value per tuner]}}``.
        """
        per_tuner, per_type = {}, defaultdict(lambda: defaultdict(list))
        for name, tuner in self.tuners():
            tuner.recording = False
            stats = dict(tuner.last_stats)
            tuner.last_stats = {}
            now = self._params(tuner)
            before = self._snapshot.get(name, now)
            stats['update_ratio'] = _norm(
                a - b for a, b in zip(now, before)) / max(
                    _norm(before), _norm(now), 1e-12)
            self._snapshot[name] = now
            per_tuner[name] = stats
            for key, value in stats.items():
                per_type[type(tuner).__name__][key].append(value)
        return per_tuner, per_type
