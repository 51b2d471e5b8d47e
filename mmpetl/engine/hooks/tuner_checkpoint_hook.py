"""Tuner-only checkpoints beside the regular ones, and loading them back."""
import os.path as osp

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.runner.checkpoint import load_state_dict

from mmpetl.registry import HOOKS
from mmpetl.utils.checkpoint import (_state_dict_of, check_base,
                                     check_shapes, keys_hash,
                                     load_checkpoint_file,
                                     load_tuner_checkpoint, sha256_file,
                                     tuner_checkpoint,
                                     write_tuner_checkpoint)

__all__ = ['TunerCheckpointHook', 'LoadTunerHook']

BASE_META_KEY = 'mmpetl_base_meta'


def _unwrap(model):
    return model.module if is_model_wrapper(model) else model


@HOOKS.register_module()
class TunerCheckpointHook(Hook):
    """Write ``<name>_tuner.pth`` beside every checkpoint ``CheckpointHook``
    saves: the trainable tensors plus meta (mmpetl version, tuner config,
    the base checkpoint's sha256 and key-list hash, taken from the run's
    ``load_from``).

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

    def before_train(self, runner) -> None:
        if not hasattr(_unwrap(runner.model), 'tuner_state_dict'):
            runner.logger.warning(
                'mmpetl: TunerCheckpointHook does nothing for '
                f'{type(_unwrap(runner.model)).__name__}: it is not an '
                'mmpetl.PETLModel (full fine-tuning saves full checkpoints)')
            self._base_meta = False
            return
        self._last = runner.message_hub.get_info('last_ckpt')
        meta = dict(base_checkpoint=None, base_sha256=None,
                    base_keys_hash=None)
        if getattr(runner, '_resume', False):
            # load_from is now None (auto resume) or the checkpoint resumed
            # from, not the base: the base recorded when the run started
            # comes back with the message hub
            resumed = runner.message_hub.get_info(BASE_META_KEY)
            if resumed is None:
                runner.logger.warning(
                    'mmpetl: the resumed checkpoint does not name the base '
                    'checkpoint: tuner checkpoints will not be tied to a '
                    'base file')
            self._base_meta = dict(meta, **(resumed or {}))
            return
        base = runner._load_from
        if base and osp.isfile(base):
            meta = dict(base_checkpoint=osp.basename(base),
                        base_sha256=sha256_file(base),
                        base_keys_hash=keys_hash(
                            _state_dict_of(load_checkpoint_file(base))))
        else:
            runner.logger.warning(
                'mmpetl: no base checkpoint (load_from) for this run: tuner '
                'checkpoints will not be tied to a base file')
        self._base_meta = meta
        # saved with every checkpoint, restored on resume
        runner.message_hub.update_info(BASE_META_KEY, meta)

    def _save_if_new(self, runner, done_iters: int, done_epochs: int) -> None:
        if self._base_meta is False:
            return
        last = runner.message_hub.get_info('last_ckpt')
        if not last or last == self._last or not runner.rank == 0:
            self._last = last
            return
        self._last = last
        path = osp.splitext(last)[0] + '_tuner.' + self.file_format
        ckpt = tuner_checkpoint(_unwrap(runner.model),
                                extra_meta=dict(self._base_meta,
                                                iter=done_iters,
                                                epoch=done_epochs))
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
    that the base is the one they were trained on.

    Args:
        tuner_checkpoint (str): path of a ``*_tuner.pth``.
        force_base (bool): accept a base with other weights of the same
            architecture.
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
        base = runner._load_from
        if base:
            check_base(tuner, base, _state_dict_of(load_checkpoint_file(base)),
                       self.force_base)
        model = _unwrap(runner.model)
        current = model.state_dict()
        unknown = [k for k in tuner['state_dict'] if k not in current]
        if unknown:
            raise KeyError(
                f'{self.tuner_checkpoint} has {len(unknown)} tensors this '
                f'model does not have (first: {unknown[:3]}): it was trained '
                f'with other tuners; use the config it was trained with.')
        check_shapes(current, tuner['state_dict'], self.tuner_checkpoint,
                     'It was trained with other tuner sizes or another '
                     'model: use the config it was trained with.')
        load_state_dict(model, tuner['state_dict'], strict=False,
                        logger=runner.logger)
        runner.logger.info(f'mmpetl: loaded {len(tuner["state_dict"])} tuner '
                           f'tensors from {self.tuner_checkpoint}')
        self._done = True

    def before_train(self, runner) -> None:
        self._load(runner)

    def before_val(self, runner) -> None:
        self._load(runner)

    def before_test(self, runner) -> None:
        self._load(runner)
