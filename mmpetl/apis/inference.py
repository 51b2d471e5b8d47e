"""One frozen detector, many tasks: the Python inference API.

    from mmpetl.apis import MultiTaskDetector
    det = MultiTaskDetector('configs/demo/et-deformable-detr_mnv2_demo-'
                            'target.py', 'base.pth')
    det.add_task('garments', 'work_dirs/et/iter_200_tuner.pth')
    det.add_task('shoes', 'work_dirs/shoes/iter_200_tuner.pth')
    det.predict('a.jpg', task='garments')              # one task
    det.predict(['a.jpg', 'b.jpg'], task=['garments', 'shoes'])  # mixed

The base checkpoint is loaded once into the ``PETLModel`` the config
builds; every tuner checkpoint is checked against the base's sha256 (the
hash is computed once per file, as the tools do) and its tensors kept
beside the model (:class:`~mmpetl.apis.tasks.TaskBank`). ``set_task``
copies one task's tensors in: no rebuild, no base reload. A list of task
names, one per image, runs one forward for a batch of several tasks
(DETR family; limits in :mod:`mmpetl.models.multitask`).

Images go through the config's test pipeline, as MMDetection's
``DetInferencer`` does; the detections are in original image coordinates.
Class names of a task come from its tuner checkpoint (``meta.classes``,
written by ``TunerCheckpointHook``); older files fall back to the config's
test dataset classes when their count fits the head, else ``classes=`` must
be given.
"""
import glob
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

from mmpetl.checkpoints import (base_sha256, build_tuned_model, check_base,
                                frozen_digests, load_tuner_checkpoint)
from mmpetl.utils import load_checkpoint_file
from mmpetl.utils.config_check import dataset_classes
from .tasks import Task, TaskBank, TaskError

__all__ = ['MultiTaskDetector', 'ImageReadError', 'read_image',
           'list_images', 'IMAGE_EXTENSIONS']

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.ppm', '.bmp', '.pgm', '.tif',
                    '.tiff', '.webp')
Image = Union[str, np.ndarray]


class ImageReadError(ValueError):
    """An image file that cannot be decoded."""


def read_image(path: str) -> np.ndarray:
    """``(H, W, 3)`` uint8 BGR array of an image file (what MMDetection's
    ``LoadImageFromFile`` gives).

    Args:
        path: the image file.

    Returns:
        np.ndarray: ``(H, W, 3)`` uint8, BGR.

    Raises:
        ImageReadError: a missing, empty, truncated or non-image file.
    """
    import mmcv
    if not osp.isfile(path):
        raise ImageReadError(f'image not found: {path}. Check the path '
                             f'(a folder or glob lists only existing files).')
    try:
        image = mmcv.imread(path)
    except Exception as err:  # cv2/pillow decoding errors
        image, why = None, f' ({type(err).__name__}: {str(err)[:120]})'
    else:
        why = ''
    if image is None or image.size == 0:
        raise ImageReadError(
            f'cannot read image {path}{why}: the file is empty, truncated or '
            f'not an image ({osp.getsize(path)} bytes). Re-export or remove '
            f'it; supported: {", ".join(IMAGE_EXTENSIONS)}.')
    return image


def list_images(inputs: Union[str, Sequence[str]]) -> List[str]:
    """Image paths from a file, a folder (its image files, sorted) or a
    glob pattern (or a list of those).

    Args:
        inputs: a path or glob, or a list of them.

    Returns:
        list[str]: the image files, in that order.

    Raises:
        FileNotFoundError: an input that names nothing.
    """
    if not isinstance(inputs, str):
        return [p for item in inputs for p in list_images(item)]
    if osp.isdir(inputs):
        return sorted(osp.join(inputs, f) for f in os.listdir(inputs)
                      if f.lower().endswith(IMAGE_EXTENSIONS)
                      and osp.isfile(osp.join(inputs, f)))
    if osp.isfile(inputs):
        return [inputs]
    if glob.has_magic(inputs):
        found = sorted(p for p in glob.glob(inputs, recursive=True)
                       if osp.isfile(p))
        if found:
            return found
    raise FileNotFoundError(
        f'no image found at {inputs!r}: give an image file, a folder of '
        f'images ({", ".join(IMAGE_EXTENSIONS)}) or a glob such as '
        f'"data/val/*.jpg" (quoted, so the shell does not expand it).')


def _test_pipeline(cfg):
    """The config's test pipeline, loading from paths or arrays."""
    from mmdet.utils import get_test_pipeline_cfg
    from mmengine.dataset import Compose
    pipeline = [dict(t) for t in get_test_pipeline_cfg(cfg)]
    loaders = [i for i, t in enumerate(pipeline)
               if str(t['type']).split('.')[-1] == 'LoadImageFromFile']
    if not loaders:
        raise ValueError('the config\'s test pipeline has no '
                         'LoadImageFromFile step to feed images to')
    pipeline[loaders[0]] = dict(type='mmdet.InferencerLoader')
    if 'meta_keys' in pipeline[-1]:  # no img_id outside a dataset
        pipeline[-1]['meta_keys'] = tuple(
            k for k in pipeline[-1]['meta_keys'] if k != 'img_id')
    return Compose(pipeline)


class MultiTaskDetector:
    """A frozen detector loaded once, serving the tasks of tuner files.

    Args:
        config (str | Config): the PETL config the tuners were trained
            with (a ``mmpetl.PETLModel``).
        base_checkpoint (str): the shared base checkpoint.
        device (str): ``'cpu'``, ``'cuda:0'``...
        cfg_options (dict, optional): config overrides.
    """

    def __init__(self, config, base_checkpoint: str, device: str = 'cpu',
                 cfg_options: Optional[Dict] = None) -> None:
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        cfg = config if isinstance(config, Config) else \
            Config.fromfile(config)
        if cfg_options:
            cfg.merge_from_dict(cfg_options)
        if not str(cfg.model.get('type', '')).endswith('PETLModel'):
            raise ValueError(
                f'{getattr(cfg, "filename", "the config")} builds a '
                f'{cfg.model.get("type")}, not a mmpetl.PETLModel: give the '
                f'PETL config the tuner checkpoints were trained with.')
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        self.cfg = cfg
        self.base_checkpoint = base_checkpoint
        self.base_sha256 = base_sha256(base_checkpoint)
        base = load_checkpoint_file(base_checkpoint)
        model = build_tuned_model(cfg.model, base, skip_other_shapes=True,
                                  base_source=base_checkpoint)
        del base
        self.model = model.to(device).eval()
        self.bank = TaskBank(self.model)
        self.pipeline = _test_pipeline(cfg)
        self.config_classes = dataset_classes(cfg, 'test')

    # -- tasks ------------------------------------------------------------
    @property
    def tasks(self) -> List[str]:
        """Registered task names, in registration order."""
        return self.bank.names if self.bank is not None else []

    @property
    def active_task(self) -> Optional[str]:
        return self.bank.active if self.bank is not None else None

    def _live(self) -> TaskBank:
        if self.bank is None:
            raise RuntimeError('this MultiTaskDetector was unloaded; build '
                               'a new one to predict again')
        return self.bank

    def task(self, name: str) -> Task:
        return self._live().get(name)

    def add_task(self, name: str, tuner_checkpoint: str,
                 classes: Optional[Sequence[str]] = None,
                 force_base: bool = False) -> Task:
        """Register the task of a tuner checkpoint (.pth/.safetensors).

        Args:
            name: the task's name.
            tuner_checkpoint: its tuner checkpoint.
            classes: its class names; default: the file's ``meta.classes``,
                else the config's test dataset classes if their count fits.
            force_base: accept a tuner trained on another base of the same
                architecture, or one that records no base
                (``--force-base``).

        Raises:
            BaseMismatchError: trained on another base (hashes named), or
                records no base (:class:`UnpinnedTunerError`).
            TaskError: a taken name, another tuner structure, class names
                that do not fit the head.
        """
        self._live()
        tuner = load_tuner_checkpoint(tuner_checkpoint)
        check_base(tuner, self.base_checkpoint, force_base,
                   sha256=self.base_sha256, digests=self._base_digests(),
                   tuner_path=tuner_checkpoint)
        meta_classes = tuner['meta'].get('classes')
        task = self.bank.add(name, tuner['state_dict'],
                             classes if classes is not None else
                             meta_classes, tuner_checkpoint)
        if task.classes is None:
            try:
                task.classes = self._fallback_classes(task)
            except TaskError:
                self.bank.remove(name)
                raise
        return task

    def _base_digests(self):
        """Digests of the model's frozen tensors (what tuner checkpoints are
        pinned to), computed on the first call."""
        if getattr(self, '_frozen_digests', None) is None:
            self._frozen_digests = frozen_digests(self.model)
        return self._frozen_digests

    def _fallback_classes(self, task: Task):
        config = self.config_classes
        if task.num_classes is None or (
                config is not None and len(config) == task.num_classes):
            return config
        raise TaskError(
            f'task {task.name!r}: {task.source} names no classes (written '
            f'before mmpetl recorded them) and the config\'s test dataset '
            f'has {len(config) if config else "no"} class names for its '
            f'{task.num_classes}-class head. Pass classes=[...] '
            f'(MultiTaskDetector.add_task) or re-save the tuner with '
            f'this mmpetl.')

    def remove_task(self, name: str) -> None:
        """Forget a task and free its tensors."""
        self._live().remove(name)

    def unload(self) -> None:
        """Forget every task and release the model (its memory is freed
        once no other reference holds it)."""
        for name in list(self.tasks):
            self.bank.remove(name)
        self.model = self.bank = None

    def set_task(self, name: str) -> Task:
        """Make ``name`` the live task (its tensors copied in)."""
        return self._live().switch(name)

    def classes(self, name: str) -> Optional[tuple]:
        return self.task(name).classes

    # -- prediction -------------------------------------------------------
    def _tasks_for(self, task, count: int) -> List[str]:
        self._live()
        if task is None:
            if self.bank.active is None and len(self.tasks) == 1:
                task = self.tasks[0]
            elif self.bank.active is None:
                raise TaskError(
                    f'no task selected and {len(self.tasks)} registered '
                    f'({", ".join(self.tasks) or "none"}): pass task=... or '
                    f'call set_task first.')
            else:
                task = self.bank.active
        if isinstance(task, str):
            return [task] * count
        task = list(task)
        if len(task) != count:
            raise ValueError(f'{len(task)} task names for {count} images: '
                             f'give one task per image, or one name')
        return task

    @torch.no_grad()
    def predict_arrays(self, images: Sequence[np.ndarray],
                       tasks: Sequence[str]) -> List:
        """Detections of BGR ``(H, W, 3)`` arrays, one forward.

        Returns:
            list[DetDataSample]: ``pred_instances`` (bboxes in the image's
            coordinates, scores, labels); metainfo ``task`` and
            ``classes``.
        """
        from mmengine.dataset import pseudo_collate
        batch = pseudo_collate([self.pipeline(img) for img in images])
        batch = self.model.data_preprocessor(batch, False)
        samples = self.bank.predict(batch['inputs'], batch['data_samples'],
                                    tasks)
        for sample, name in zip(samples, tasks):
            sample.set_metainfo(dict(task=name,
                                     classes=self.bank.get(name).classes))
        return samples

    def predict(self, images: Union[Image, Sequence[Image]],
                task: Union[None, str, Sequence[str]] = None,
                batch_size: int = 4):
        """Detections of images (paths or BGR arrays).

        Args:
            images: one image or a list.
            task: None (the active task, or the only one), a task name, or
                one name per image (a mixed-task batch).
            batch_size: images per forward.

        Returns:
            DetDataSample, or a list of them for a list of images.

        Raises:
            ImageReadError: an image that cannot be read.
            TaskError: an unknown task (the known ones listed).
        """
        single = isinstance(images, (str, np.ndarray))
        images = [images] if single else list(images)
        tasks = self._tasks_for(task, len(images))
        for name in set(tasks):
            self.bank.get(name)
        arrays = [read_image(i) if isinstance(i, str) else i
                  for i in images]
        out = []
        for start in range(0, len(arrays), max(1, batch_size)):
            stop = start + max(1, batch_size)
            out += self.predict_arrays(arrays[start:stop], tasks[start:stop])
        return out[0] if single else out
