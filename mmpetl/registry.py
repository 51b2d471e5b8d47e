"""Scoped child registries of MMEngine's root registries.

Configs say ``type='mmpetl.PETLModel'``: MMEngine resolves the ``mmpetl``
scope by importing ``mmpetl.registry`` and then the modules listed in
``locations``, so no config needs ``custom_imports``.
"""
from mmengine.registry import HOOKS as MMENGINE_HOOKS
from mmengine.registry import MODELS as MMENGINE_MODELS
from mmengine.registry import \
    OPTIM_WRAPPER_CONSTRUCTORS as MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS
from mmengine.registry import Registry

MODELS = Registry('model', parent=MMENGINE_MODELS, scope='mmpetl',
                  locations=['mmpetl.models'])
HOOKS = Registry('hook', parent=MMENGINE_HOOKS, scope='mmpetl',
                 locations=['mmpetl.engine.hooks'])
OPTIM_WRAPPER_CONSTRUCTORS = Registry(
    'optimizer wrapper constructor',
    parent=MMENGINE_OPTIM_WRAPPER_CONSTRUCTORS, scope='mmpetl',
    locations=['mmpetl.engine.optimizers'])
OPTIM_WRAPPERS = Registry('optim_wrapper', parent=MMENGINE_OPTIM_WRAPPERS,
                          scope='mmpetl',
                          locations=['mmpetl.engine.optimizers'])
# Tuners are plain torch modules; this registry only maps config names.
TUNERS = Registry('tuner', scope='mmpetl', locations=['mmpetl.tuners'])
