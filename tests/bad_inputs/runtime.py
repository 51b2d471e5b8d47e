"""Base loading, resume, task routing and patches."""
import torch

from mmpetl.apis import RoutingError
from mmpetl.utils import CheckpointError
from mmpetl.utils.config_check import ConfigError

from .common import TUNERS, Case, demo_cfg


def _base_missing_tensor(tmp):
    from mmpetl.checkpoints import build_tuned_model
    from mmpetl.models import build_inner_model
    from tests.conftest import small_detr_cfg
    state = build_inner_model(small_detr_cfg()).state_dict()
    del state['encoder.layers.0.ffn.layers.1.weight']
    build_tuned_model(dict(type='mmpetl.PETLModel', model=small_detr_cfg(),
                           tuners=TUNERS, trainable=['bbox_head']),
                      {'state_dict': state}, base_source='base.pth')


def _random_base(tmp):
    from mmpetl.engine.start import check_base_loaded, resolve_resume
    cfg = demo_cfg(tmp)  # load_from=None
    cfg.work_dir = str(tmp / 'work')
    resolve_resume(cfg, 'auto')  # `--resume` in a fresh work dir
    check_base_loaded(cfg)


def _routing_undeclared(tmp):
    from mmpetl.tuners.routing import TaskGroups, route_call
    groups = TaskGroups(2, [(torch.tensor([0]), {}, 'a'),
                            (torch.tensor([1]), {}, 'b')])
    route_call(lambda x, y: x + y, (torch.ones(2, 4), torch.ones(2, 4)),
               None, groups, torch.nn.Identity(), 0, 'MyTuner',
               in_dims=(0, None))


def _routing_declared_size(tmp):
    from mmpetl.tuners.routing import TaskGroups, route_call
    groups = TaskGroups(2, [(torch.tensor([0]), {}, 'a'),
                            (torch.tensor([1]), {}, 'b')])
    route_call(lambda x: x, (torch.ones(3, 4), ), None, groups,
               torch.nn.Identity(), 0, 'MyTuner', in_dims=0)


def _unknown_patch(tmp):
    import mmpetl
    mmpetl.apply_patches(['msda'])


LOADING_CASES = [
    Case('base-missing-tensor', 'checkpoint',
         'base checkpoint that lacks a frozen tensor of the config\'s model '
         '(export, `MultiTaskDetector`)', _base_missing_tensor,
         CheckpointError,
         r'base\.pth does not fit the model the config builds:.*1 frozen '
         r'tensor\(s\) of the model missing from it: encoder\.layers\.0\.'
         r'ffn\.layers\.1\.weight.*random tensors'),
    Case('petl-random-base', 'config',
         '`tools/train.py` of a PETL config with `load_from=None`, or '
         '`--resume` in a fresh work dir, and no pretrained `init_cfg`',
         _random_base, ConfigError,
         r'frozen base would be loaded from no checkpoint.*randomly '
         r'initialised frozen detector.*load_from=BASE\.pth.*'
         r'allow_random_base = True'),
    Case('routing-undeclared-input', 'tasks',
         'a routed tuner function reads a per-sample input it did not '
         'declare (`in_dims`, `routed_args`/`routed_kwargs`)',
         _routing_undeclared, RoutingError,
         r"MyTuner: task 'a' has 1 of the 2 samples but its routed output "
         r'has 2 rows.*Declare it'),
    Case('routing-declared-size', 'tasks',
         'a routed tuner function declares a per-sample input whose size '
         'is not a multiple of the batch (`in_dims`)',
         _routing_declared_size, RoutingError,
         r'MyTuner args\[0\]: declared to hold the 2 samples along '
         r'dimension 0, but it has shape \(3, 4\).*declare it None'),
    Case('unknown-patch', 'tools',
         '`mmpetl.apply_patches([\'msda\'])`: a patch name that does not '
         'exist', _unknown_patch, KeyError,
         r"unknown mmpetl patch\(es\) \['msda'\]; the patches are "
         r"\['atomic_checkpoint_save'"),
]
