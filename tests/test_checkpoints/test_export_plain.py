"""A merged export runs in stock MMDetection, mmpetl never imported.

tools/model_converters/export_merged.py (its ``main``, in this process)
turns base + a LoRA tuner file (5-class head) into OUT.pth and OUT.py; a
fresh interpreter without mmpetl
on its path (the venv's editable mmpetl would still be importable: the
child checks that nothing imported it) runs ``init_detector`` +
``inference_detector`` and reproduces mmpetl's predictions.
"""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

from mmpetl.apis import MultiTaskDetector
from tests.test_apis.common import (assert_same_detections, config,
                                    detector_cfg, make_lora_task)

ROOT = Path(__file__).resolve().parents[2]
LORA = [dict(type='LoRA', presets=['attn', 'ffn'], rank=2)]
CLASSES = ('sandal', 'shirt', 'sneaker', 'bag', 'boot')

CHILD = r'''
import importlib.util, json, os, sys
import torch
# This environment's transformers breaks MMPretrain's multimodal imports
# (upstream; mmpetl's import guard handles it, but mmpetl must not be
# imported here): MMPretrain's own flag turns them off, as the guard does.
spec = importlib.util.find_spec('mmpretrain')
dep = importlib.util.spec_from_file_location(
    'mmpretrain.utils.dependency', os.path.join(
        spec.submodule_search_locations[0], 'utils', 'dependency.py'))
flags = importlib.util.module_from_spec(dep)
dep.loader.exec_module(flags)
flags.WITH_MULTIMODAL = False
sys.modules['mmpretrain.utils.dependency'] = flags
from mmdet.apis import inference_detector, init_detector
cfg, ckpt, out = sys.argv[1:4]
model = init_detector(cfg, ckpt, device='cpu')
found = []
for path in sys.argv[4:]:
    pred = inference_detector(model, path).pred_instances
    found.append(dict(bboxes=pred.bboxes, scores=pred.scores,
                      labels=pred.labels))
torch.save(found, out)
print(json.dumps(dict(classes=list(model.dataset_meta['classes']),
                      mmpetl=sorted(m for m in sys.modules
                                    if m.split('.')[0] == 'mmpetl'))))
'''


def test_merged_export_runs_in_stock_mmdet_without_mmpetl(files, tmp_path,
                                                          capsys):
    tuner = make_lora_task(files['base'], tmp_path, LORA, CLASSES)
    cfg_file = tmp_path / 'lora.py'
    config(len(CLASSES), tuners=LORA).dump(str(cfg_file))
    out = tmp_path / 'export' / 'lora_plain.pth'
    spec = importlib.util.spec_from_file_location(
        'mmpetl_export_merged', ROOT / 'tools/model_converters/'
        'export_merged.py')
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    tool.main([str(cfg_file), str(files['base']), str(tuner), str(out)])
    plain_cfg = out.with_suffix('.py')
    assert f'its config: {plain_cfg}' in capsys.readouterr().out
    text = plain_cfg.read_text()
    assert 'mmpetl' not in text and 'PETLModel' not in text
    assert 'num_classes=5' in text and "'sneaker'" in text

    images = [str(p) for p in files['images'][:2]]
    child_env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    child = subprocess.run(
        [sys.executable, '-c', CHILD, str(plain_cfg), str(out),
         str(tmp_path / 'plain.pt')] + images,
        capture_output=True, text=True, env=child_env, cwd=tmp_path)
    assert child.returncode == 0, child.stderr[-3000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report['mmpetl'] == []  # nothing imported mmpetl
    assert tuple(report['classes']) == CLASSES
    plain = torch.load(tmp_path / 'plain.pt', weights_only=True)

    det = MultiTaskDetector(config(len(CLASSES), tuners=LORA),
                            str(files['base']))
    det.add_task('lora', str(tuner))
    for path, got in zip(images, plain):
        want = det.predict(path, task='lora').pred_instances
        assert int(want.labels.max()) < 5
        # merged W + (a/r)BA vs the unmerged branch: float rounding (a
        # missing merge moves scores by far more than 1e-4)
        assert_same_detections(SimpleNamespace(**got), want, 1e-4, 0.1)


def test_plain_config_names_what_still_needs_mmpetl():
    """The demo's detector uses mmpetl's MobileNetV2 backbone: the plain
    config keeps importing mmpetl for it, and says so."""
    from mmpetl.checkpoints import plain_config
    cfg = config(3)
    cfg.model.model.backbone = dict(type='mmpetl.TorchvisionMobileNetV2')
    plain, needs = plain_config(cfg, ('a', 'b', 'c'))
    assert needs == ['model.backbone: mmpetl.TorchvisionMobileNetV2']
    assert plain['custom_imports']['imports'] == ['mmpetl']
    assert 'custom_hooks' not in plain
    assert 'constructor' not in plain['optim_wrapper']
    assert plain['model']['type'] == detector_cfg()['type']
    assert plain['test_dataloader']['dataset']['metainfo']['classes'] == (
        'a', 'b', 'c')
    plain, needs = plain_config(config(3))
    assert needs == [] and 'custom_imports' not in plain
