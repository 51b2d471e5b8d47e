"""Tuner-only checkpoints beside the regular ones, and loading them back.

Tuner checkpoints are pinned to the frozen tensors of the model when they
are written (see :mod:`mmpetl.checkpoints.base`): a ``load_from`` URL, a
local file or a resumed run pin alike. Loading one back checks the model's
frozen tensors against that pin on rank 0; the result, or the error, is
broadcast so every rank acts alike.
"""
import os.path as osp

from mmengine.hooks import Hook

from mmpetl.checkpoints import (check_base, check_tuner_fits, frozen_digests,
                                load_tuner_checkpoint, load_tuner_state,
                                tuner_checkpoint, write_tuner_checkpoint)
from mmpetl.registry import HOOKS
from mmpetl.utils import metainfo_classes, on_rank0, unwrap_model
from mmpetl.utils.mmengine_private import runner_load_from, runner_resumes

__all__ = ['TunerCheckpointHook', 'LoadTunerHook']

BASE_META_KEY = 'mmpetl_base_meta'


def _dataset_classes(runner):
    """The training dataset's class names (a list), or None."""
    try:
        dataset = runner.train_dataloader.dataset
    except (AttributeError, TypeError):
        return None
    classes = metainfo_classes(dataset)
    return None if classes is None else [str(c) for c in classes]


@HOOKS.register_module()
class TunerCheckpointHook(Hook):
    """Write ``<name>_tuner.pth`` beside every checkpoint ``CheckpointHook``
    saves: the trainable tensors plus meta (mmpetl version, tuner config,
    the pin of the base: a sha256 over the model's frozen tensors, hashed
    at each save, and the file name of the run's ``load_from``; and
    ``classes``: the training dataset's class names, so that inference
    can name what the task's head predicts).

    Args:
        file_format (str): ``'pth'`` (torch, loaded with safe loading) or
            ``'safetensors'`` (``<name>_tuner.safetensors``, no pickle).
    """

    priority = 'VERY_LOW'  # after CheckpointHook has saved

    def __init__(self, file_format: str = 'pth') -> None:
        if file_format not in ('pth', 'safetensors'):
            raise ValueError(f"TunerCheckpointHook: file_format must be "
                             f"'pth' or 'safetensors', got {file_format!r}")
        self.file_format = file_format
        self._last = None
        self._base_meta = None
        self._classes = None

    def before_train(self, runner) -> None:
        if not hasattr(unwrap_model(runner.model), 'tuner_state_dict'):
            runner.logger.warning(
                'mmpetl: TunerCheckpointHook does nothing for '
                f'{type(unwrap_model(runner.model)).__name__}: it is not an '
                'mmpetl.PETLModel (full fine-tuning saves full checkpoints)')
            self._base_meta = False
            return
        self._last = runner.message_hub.get_info('last_ckpt')
        self._classes = _dataset_classes(runner)
        if runner_resumes(runner):
            # load_from is now None (auto resume) or the checkpoint resumed
            # from, not the base: the base's name recorded when the run
            # started comes back with the message hub (the pin is taken
            # from the model's frozen tensors at each save anyway)
            resumed = runner.message_hub.get_info(BASE_META_KEY) or {}
            self._base_meta = dict(
                base_checkpoint=resumed.get('base_checkpoint'))
            return
        base = runner_load_from(runner)
        if not base:
            runner.logger.warning(
                'mmpetl: no base checkpoint (load_from) for this run: tuner '
                'checkpoints are pinned to the frozen weights the model was '
                'built with (its init_cfg, or random)')
        self._base_meta = dict(
            base_checkpoint=osp.basename(str(base)) if base else None)
        # saved with every checkpoint, restored on resume
        runner.message_hub.update_info(BASE_META_KEY, self._base_meta)

    def _save_if_new(self, runner, done_iters: int, done_epochs: int) -> None:
        if self._base_meta is False:
            return
        last = runner.message_hub.get_info('last_ckpt')
        if not last or last == self._last or not runner.rank == 0:
            self._last = last
            return
        self._last = last
        path = osp.splitext(last)[0] + '_tuner.' + self.file_format
        ckpt = tuner_checkpoint(unwrap_model(runner.model),
                                extra_meta=dict(self._base_meta,
                                                iter=done_iters,
                                                epoch=done_epochs,
                                                classes=self._classes))
        write_tuner_checkpoint(ckpt, path)
        runner.logger.info(f'mmpetl: tuner checkpoint {path} '
                           f'({osp.getsize(path) / 2**20:.2f} MiB, '
                           f'{len(ckpt["state_dict"])} tensors)')

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None) -> None:
        # the loop counts this iteration only after the hooks ran
        self._save_if_new(runner, runner.iter + 1, runner.epoch)

    def after_train_epoch(self, runner) -> None:
        self._save_if_new(runner, runner.iter, runner.epoch + 1)

    def after_train(self, runner) -> None:
        self._save_if_new(runner, runner.iter, runner.epoch)


@HOOKS.register_module()
class LoadTunerHook(Hook):
    """Load a tuner checkpoint on top of the base loaded by ``load_from``.

    ``load_from`` gives the base; this hook (added by ``tools/test.py
    --tuner``, or in a config) then loads the tuner tensors, after checking
    (on rank 0) that the model's frozen tensors are the ones they were
    trained on (the pin, see :mod:`mmpetl.checkpoints.base`), whether the
    base came from a file, a URL or the backbone's ``init_cfg``.

    Args:
        tuner_checkpoint (str): path of a ``*_tuner.pth``.
        force_base (bool): accept a base with other weights of the same
            architecture, or a tuner checkpoint that records no base.
    """

    priority = 'VERY_HIGH'

    def __init__(self, tuner_checkpoint: str,
                 force_base: bool = False) -> None:
        self.tuner_checkpoint = tuner_checkpoint
        self.force_base = force_base
        self._done = False

    def _load(self, runner) -> None:
        if self._done:
            return
        tuner = load_tuner_checkpoint(self.tuner_checkpoint)
        model = unwrap_model(runner.model)
        check_tuner_fits(model.state_dict(), tuner, self.tuner_checkpoint)
        base = runner_load_from(runner)
        on_rank0(lambda: check_base(
            tuner, base or 'the model (no load_from)', self.force_base,
            digests=frozen_digests(model), tuner_path=self.tuner_checkpoint))
        load_tuner_state(model, tuner, self.tuner_checkpoint)
        runner.logger.info(f'mmpetl: loaded {len(tuner["state_dict"])} tuner '
                           f'tensors from {self.tuner_checkpoint}')
        self._done = True

    def before_train(self, runner) -> None:
        self._load(runner)

    def before_val(self, runner) -> None:
        self._load(runner)

    def before_test(self, runner) -> None:
        self._load(runner)
