"""What ``tools/infer.py`` writes per image, in ``DetInferencer``'s layout.

    OUT/vis/<image stem>.png      the image with its detections drawn
                                  (``DetLocalVisualizer``, the task's class
                                  names, boxes above the score threshold)
    OUT/preds/<image stem>.json   every detection: ``bboxes`` (x1, y1, x2,
                                  y2 in image pixels), ``scores``,
                                  ``labels``, ``label_names``, ``task``

As in MMDetection's ``DetInferencer``, the JSON keeps every detection (the
threshold only selects what is drawn). Each file is written to a temporary
name and renamed (:func:`mmpetl.utils.atomic_write`): an interrupted run
leaves whole files only.
"""
import itertools
import json
import os.path as osp
from typing import Dict, Optional, Sequence

import numpy as np

from mmpetl.utils import atomic_write

__all__ = ['prediction_dict', 'PredictionWriter']

_COUNTER = itertools.count()


def prediction_dict(sample, classes: Optional[Sequence[str]] = None,
                    task: Optional[str] = None) -> Dict:
    """A JSON-ready dict of a ``DetDataSample``'s ``pred_instances``.

    Args:
        sample: a predicted ``DetDataSample``.
        classes: class names (adds ``label_names``).
        task: the task's name (adds ``task``).

    Returns:
        dict: ``bboxes`` (N lists of x1, y1, x2, y2), ``scores`` (N),
        ``labels`` (N), and ``label_names``/``task`` when given.
    """
    pred = sample.pred_instances.cpu().numpy()
    labels = [int(x) for x in pred.labels]
    out = dict(bboxes=[[float(v) for v in box] for box in pred.bboxes],
               scores=[float(x) for x in pred.scores], labels=labels)
    if classes is not None:
        out['label_names'] = [classes[i] for i in labels]
    if task is not None:
        out['task'] = task
    return out


class PredictionWriter:
    """Writes ``vis/<stem>.png`` and ``preds/<stem>.json`` under a folder.

    Args:
        out_dir: the output folder.
        score_thr: detections drawn from this score up.
        palette: box colours (``'coco'``, ``'voc'``, ``'citys'``,
            ``'random'``, as MMDetection's ``--palette``); None: the
            visualizer's default.
        save_vis: write ``vis/<stem>.png``.
        save_pred: write ``preds/<stem>.json``.
        show: also display each drawn image in a window.
    """

    def __init__(self, out_dir: str, score_thr: float = 0.3,
                 palette: Optional[str] = None, save_vis: bool = True,
                 save_pred: bool = True, show: bool = False) -> None:
        from mmdet.visualization import DetLocalVisualizer
        self.out_dir = out_dir
        self.score_thr = score_thr
        self.palette = palette
        self.save_vis, self.save_pred, self.show = save_vis, save_pred, show
        self.visualizer = DetLocalVisualizer(
            name=f'mmpetl_infer_{next(_COUNTER)}_{id(self)}')

    def paths(self, stem: str) -> Dict[str, str]:
        return dict(vis=osp.join(self.out_dir, 'vis', stem + '.png'),
                    preds=osp.join(self.out_dir, 'preds', stem + '.json'))

    def write(self, stem: str, image_bgr: np.ndarray, sample,
              classes: Optional[Sequence[str]], task: Optional[str] = None
              ) -> Dict[str, str]:
        """Write both files of one image (atomically).

        Args:
            stem: the output name (the image file's stem).
            image_bgr: ``(H, W, 3)`` uint8 BGR image the boxes are drawn on.
            sample: its predicted ``DetDataSample``.
            classes: the task's class names.
            task: the task's name, recorded in the JSON.

        Returns:
            dict: the ``vis`` and ``preds`` paths written (those asked for).
        """
        import mmcv
        paths = self.paths(stem)
        written = {}
        if self.save_vis or self.show:
            vis = self.visualizer
            vis.dataset_meta = dict(classes=tuple(classes)) if classes \
                else {}
            if self.palette:
                vis.dataset_meta['palette'] = self.palette
            vis.add_datasample(stem, image_bgr[..., ::-1], sample,
                               draw_gt=False, show=self.show,
                               pred_score_thr=self.score_thr)
            drawn = vis.get_image()

            def write_png(tmp):
                if not mmcv.imwrite(drawn[..., ::-1], tmp):
                    raise OSError(f'could not write {paths["vis"]}')

            if self.save_vis:
                atomic_write(paths['vis'], write_png)
                written['vis'] = paths['vis']
        if self.save_pred:
            text = json.dumps(prediction_dict(sample, classes, task),
                              indent=1)

            def write_json(tmp):
                with open(tmp, 'w') as f:
                    f.write(text)

            atomic_write(paths['preds'], write_json)
            written['preds'] = paths['preds']
        return written
