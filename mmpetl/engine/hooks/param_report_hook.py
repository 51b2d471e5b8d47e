"""Log, at the start of training, which parameters train and which are frozen."""
from mmengine.hooks import Hook

from mmpetl.injection import injection_table, parameter_groups_table
from mmpetl.ops import msda_backend
from mmpetl.registry import HOOKS
from mmpetl.utils import unwrap_model

__all__ = ['ParamReportHook']


@HOOKS.register_module()
class ParamReportHook(Hook):
    """Logs the injection table and a table: group, #params, % of total,
    trainable/frozen."""

    priority = 'VERY_LOW'

    def before_train(self, runner) -> None:
        model = unwrap_model(runner.model)
        if getattr(model, 'injected', None) is not None:
            runner.logger.info('mmpetl: injected tuners\n' +
                               injection_table(model.injected, model))
        runner.logger.info('mmpetl: parameters\n' +
                           parameter_groups_table(model))
        if any(type(m).__name__ == 'MultiScaleDeformableAttention'
               for m in model.modules()):
            device = next(model.parameters()).device
            runner.logger.info('mmpetl: deformable attention runs on '
                               f'{device}: {msda_backend(device)}')
