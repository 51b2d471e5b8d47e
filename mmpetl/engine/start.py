"""Where a training run starts from: ``--resume``, ``load_from``, the base.

``tools/train.py --resume`` without a path resumes from the work dir's
last checkpoint, as MMDetection's does. In a fresh work dir there is
nothing to resume: MMDetection's tool has by then set ``load_from=None``,
and MMEngine (``resume=True``, no ``load_from``, no ``last_checkpoint``)
starts from the model's init, which for a PETL model is a randomly
initialised frozen detector. :func:`resolve_resume` instead keeps the
config's ``load_from`` in that case and loads it (MMEngine, given
``resume=True`` with a ``load_from``, starts from ``load_from`` too, but
as a resume, which a base checkpoint without optimizer state cannot be).
:func:`check_base_loaded` refuses to train a ``PETLModel`` whose frozen
base no checkpoint fills.
"""
import os.path as osp
from typing import Optional

from mmpetl.utils.config_check import ConfigError

__all__ = ['resolve_resume', 'check_base_loaded', 'UnloadedBaseError',
           'last_checkpoint']


class UnloadedBaseError(ConfigError):
    """A PETL run whose frozen base would stay at its random init."""


def _get(cfg, key, default=None):
    getter = getattr(cfg, 'get', None)
    return getter(key, default) if getter is not None else default


def last_checkpoint(work_dir: Optional[str]) -> Optional[str]:
    """The checkpoint MMEngine's auto-resume would load: the path in
    ``WORK_DIR/last_checkpoint`` (written by its ``CheckpointHook``), if
    that file exists."""
    if not work_dir:
        return None
    marker = osp.join(work_dir, 'last_checkpoint')
    if not osp.isfile(marker):
        return None
    with open(marker) as f:
        path = f.read().strip()
    return path or None


def resolve_resume(cfg, resume: Optional[str]) -> Optional[str]:
    """Apply ``--resume [CKPT]`` to ``cfg``.

    Args:
        cfg: the run's config (``work_dir`` and ``load_from`` set).
        resume: None (no ``--resume``), ``'auto'`` (``--resume`` without a
            path) or a checkpoint path.

    Returns:
        str | None: a line saying what the run starts from (for the log);
        None without ``--resume``.
    """
    if resume is None:
        return None
    if resume != 'auto':
        cfg.resume = True
        cfg.load_from = resume
        return f'mmpetl: --resume: resuming from {resume}'
    last = last_checkpoint(_get(cfg, 'work_dir'))
    if last is not None:
        cfg.resume = True
        cfg.load_from = None  # MMEngine reads WORK_DIR/last_checkpoint
        return f'mmpetl: --resume: resuming from {last}'
    cfg.resume = False
    return (f'mmpetl: --resume: nothing to resume in {_get(cfg, "work_dir")} '
            f'(no last_checkpoint); starting from load_from='
            f'{_get(cfg, "load_from")}')


def _pretrained_init(obj) -> bool:
    """Whether a model config loads any weights itself
    (``init_cfg=dict(type='Pretrained', ...)`` anywhere in it)."""
    if isinstance(obj, dict):
        init = obj.get('init_cfg')
        inits = init if isinstance(init, (list, tuple)) else [init]
        if any(isinstance(i, dict) and str(i.get('type', '')).split('.')[-1]
               == 'Pretrained' and i.get('checkpoint') for i in inits):
            return True
        return any(_pretrained_init(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return any(_pretrained_init(v) for v in obj)
    return False


def check_base_loaded(cfg) -> None:
    """Refuse to train a ``PETLModel`` whose frozen base comes from no
    checkpoint.

    The base is loaded when ``load_from`` is set, when the run resumes
    from a checkpoint, or when the model config loads weights itself
    (``init_cfg=dict(type='Pretrained', checkpoint=...)``, e.g. an ImageNet
    backbone). ``allow_random_base=True`` in the config opts out (an
    experiment on a randomly initialised frozen model).

    Args:
        cfg: the run's config, after :func:`resolve_resume`.

    Raises:
        UnloadedBaseError: naming the fixes.
    """
    model = _get(cfg, 'model') or {}
    kind = str(model.get('type', '')) if isinstance(model, dict) else ''
    if kind.split('.')[-1] != 'PETLModel' or _get(cfg, 'allow_random_base'):
        return
    if _get(cfg, 'load_from'):
        return
    if _get(cfg, 'resume') and last_checkpoint(_get(cfg, 'work_dir')):
        return
    if _pretrained_init(model.get('model')):
        return
    raise UnloadedBaseError(
        f'the PETLModel\'s frozen base would be loaded from no checkpoint '
        f'(load_from is None, nothing to resume in '
        f'{_get(cfg, "work_dir")}, no init_cfg=dict(type=\'Pretrained\') in '
        f'model.model): the tuners would train on a randomly initialised '
        f'frozen detector. Fix: `--cfg-options load_from=BASE.pth` (the '
        f'checkpoint of the detector the tuners adapt), `--resume` in a '
        f'work dir that holds a checkpoint, or `allow_random_base = True` '
        f'in the config for an experiment on a random frozen model.')
