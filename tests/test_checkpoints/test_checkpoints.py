"""Tuner checkpoints: write, apply to a base, verify, export merged, publish."""
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmpetl.models import PETLModel, build_inner_model
from mmpetl.checkpoints import (PIN_SHA, BaseMismatchError,
                                NotMergeableError, apply_tuner_checkpoint,
                                content_pin, export_checkpoint,
                                load_tuner_checkpoint, save_tuner_checkpoint,
                                tensor_digests)
from mmpetl.utils import CheckpointError, load_checkpoint_file
from tests.conftest import small_detr_cfg, tensor_outputs

ROOT = Path(__file__).resolve().parents[2]
TUNERS = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=8),
          dict(type='LoRA', presets=['attn'], rank=2),
          dict(type='ScaledPrefix', presets=['decoder_self_attn'],
               num_prefix=4)]


def trained_petl(base_path):
    """A PETL model on the base, with tuners and head moved off init."""
    model = PETLModel(model=small_detr_cfg(), tuners=TUNERS,
                      trainable=['bbox_head'])
    model.load_state_dict(torch.load(base_path)['state_dict'], strict=False)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@pytest.fixture()
def base(tmp_path):
    torch.manual_seed(3)
    vanilla = build_inner_model(small_detr_cfg())
    vanilla.init_weights()
    path = tmp_path / 'base.pth'
    torch.save(dict(state_dict=vanilla.state_dict(),
                    meta=dict(dataset_meta=dict(classes=('a', 'b', 'c')))),
               path)
    return path


def test_tuner_checkpoint_apply_reproduces_predictions(tmp_path, base):
    model = trained_petl(base)
    tuner_path = tmp_path / 'iter_1_tuner.pth'
    ckpt = save_tuner_checkpoint(model, str(tuner_path), str(base))
    meta = ckpt['meta']
    assert meta['base_checkpoint'] == 'base.pth'
    frozen = {k: v for k, v in torch.load(base)['state_dict'].items()
              if k not in ckpt['state_dict']}
    assert meta[PIN_SHA] == content_pin(tensor_digests(frozen))[PIN_SHA]
    assert meta['base_content_tensors'] == len(frozen)
    assert meta['tuners'][0]['type'] == 'ParallelAdapter'
    assert meta['trainable'] == ['bbox_head']
    assert meta['mmpetl_version']
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    stored = sum(v.numel() for v in ckpt['state_dict'].values())
    assert trainable <= stored < trainable * 1.01  # + fixed-scale buffers
    assert tuner_path.stat().st_size * 10 < base.stat().st_size

    full = apply_tuner_checkpoint(str(base), str(tuner_path),
                                  str(tmp_path / 'full.pth'))
    rebuilt = PETLModel(model=small_detr_cfg(), tuners=TUNERS,
                        trainable=['bbox_head']).eval()
    result = rebuilt.load_state_dict(
        load_checkpoint_file(tmp_path / 'full.pth')['state_dict'])
    assert not result.missing_keys and not result.unexpected_keys
    assert full['meta']['dataset_meta']['classes'] == ('a', 'b', 'c')
    with torch.no_grad():
        for a, b in zip(tensor_outputs(model, 'detr'),
                        tensor_outputs(rebuilt, 'detr')):
            assert torch.equal(a, b)  # exactly what the trained model does


def test_export_merges_lora_into_a_plain_checkpoint(tmp_path, base):
    """LoRA-only tuners export as the vanilla model's keys (merged by
    PETLModel.merge_for_deploy); the plain model predicts what the tuned
    one does. Tuners that cannot merge are refused, named."""
    lora = [t for t in TUNERS if t['type'] == 'LoRA']
    cfg = dict(type='mmpetl.PETLModel', model=small_detr_cfg(), tuners=lora,
               trainable=['bbox_head'])
    model = PETLModel(**{k: v for k, v in cfg.items() if k != 'type'})
    model.load_state_dict(torch.load(base)['state_dict'], strict=False)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    model.eval()
    save_tuner_checkpoint(model, str(tmp_path / 't.pth'), str(base))
    out = tmp_path / 'plain.pth'
    exported = export_checkpoint(cfg, str(base), str(tmp_path / 't.pth'),
                                 str(out))
    # 6 attentions (2 encoder self, 2 decoder self, 2 cross) x in/out_proj
    assert len(exported['meta']['mmpetl_export']['merged']) == 12
    plain = build_inner_model(small_detr_cfg()).eval()
    result = plain.load_state_dict(load_checkpoint_file(out)['state_dict'])
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        for a, b in zip(tensor_outputs(model, 'detr'),
                        tensor_outputs(plain, 'detr')):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)

    full = trained_petl(base)
    save_tuner_checkpoint(full, str(tmp_path / 'all.pth'), str(base))
    cfg['tuners'] = TUNERS
    with pytest.raises(NotMergeableError, match=r'ParallelAdapter, '
                       r'ScaledPrefix.*only LoRA merges'):
        export_checkpoint(cfg, str(base), str(tmp_path / 'all.pth'))


def test_mismatched_base_is_refused(tmp_path, base):
    model = trained_petl(base)
    save_tuner_checkpoint(model, str(tmp_path / 't.pth'), str(base))
    other = tmp_path / 'other.pth'
    state = torch.load(base)['state_dict']
    state['backbone.conv1.weight'] = state['backbone.conv1.weight'] + 1
    torch.save(dict(state_dict=state), other)
    with pytest.raises(BaseMismatchError,
                       match=r'trained on base `base.pth`.*same architecture'
                       r'.*--force-base'):
        apply_tuner_checkpoint(str(other), str(tmp_path / 't.pth'))
    # explicitly overridable, for the same architecture only
    apply_tuner_checkpoint(str(other), str(tmp_path / 't.pth'), force=True)
    del state['backbone.conv1.weight']
    torch.save(dict(state_dict=state), other)
    with pytest.raises(BaseMismatchError, match='different architecture'):
        apply_tuner_checkpoint(str(other), str(tmp_path / 't.pth'),
                               force=True)


def test_bad_files_get_clear_errors(tmp_path, base):
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(base.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match='truncated, corrupt'):
        load_checkpoint_file(truncated)
    with pytest.raises(CheckpointError, match='not an mmpetl tuner'):
        load_tuner_checkpoint(str(base))
    with pytest.raises(FileNotFoundError, match='missing.pth'):
        load_checkpoint_file(tmp_path / 'missing.pth')


def test_publish_model_name_and_hash(tmp_path, base):
    ckpt = dict(torch.load(base))
    ckpt['optimizer'] = dict(state={}, param_groups=[])
    ckpt['message_hub'] = dict(log_scalars={})
    src = tmp_path / 'iter_10.pth'
    torch.save(ckpt, src)
    out = subprocess.run(
        [sys.executable, str(ROOT / 'tools/model_converters/publish_model.py'),
         str(src), str(tmp_path / 'et-detr_r18_demo.pth'), '--date',
         '20261125'],
        capture_output=True, text=True, check=True).stdout
    files = list(tmp_path.glob('et-detr_r18_demo_20261125-*.pth'))
    assert len(files) == 1 and files[0].name in out
    sha = hashlib.sha256(files[0].read_bytes()).hexdigest()
    assert re.fullmatch(rf'et-detr_r18_demo_20261125-{sha[:8]}\.pth',
                        files[0].name)  # what torch.hub's check_hash checks
    published = load_checkpoint_file(files[0])
    assert 'optimizer' not in published and 'message_hub' not in published
    assert published['meta']['dataset_meta']['classes'] == ('a', 'b', 'c')


def test_apply_to_a_base_with_other_classes_keeps_the_new_head(tmp_path,
                                                                base):
    """The usual transfer: a 3-class base, tuners + a new 5-class head.
    The head replaces the base's (other shape); everything else must fit."""
    model = PETLModel(model=small_detr_cfg(num_classes=5), tuners=TUNERS,
                      trainable=['bbox_head'])
    state = torch.load(base)['state_dict']
    model.load_state_dict({k: v for k, v in state.items()
                           if not k.startswith('bbox_head.fc_cls')},
                          strict=False)
    model = model.eval()
    tuner = tmp_path / 't.pth'
    save_tuner_checkpoint(model, str(tuner), str(base))
    applied = apply_tuner_checkpoint(str(base), str(tuner))['state_dict']
    assert applied['bbox_head.fc_cls.weight'].shape[0] == 5 + 1  # + bg
    assert state['bbox_head.fc_cls.weight'].shape[0] == 3 + 1
    fresh = PETLModel(model=small_detr_cfg(num_classes=5), tuners=TUNERS,
                      trainable=['bbox_head'])
    fresh.load_state_dict(applied, strict=True)
    fresh.eval()
    for a, b in zip(tensor_outputs(model, 'detr'),
                    tensor_outputs(fresh, 'detr')):
        assert torch.equal(a, b)
    # a tuner tensor that does not fit the base is still refused
    ckpt = torch.load(tuner, weights_only=True)
    ckpt['state_dict']['bbox_head.fc_cls.weight'] = torch.zeros(6, 8)
    ckpt['meta']['trainable'] = []
    torch.save(ckpt, tuner)
    with pytest.raises(CheckpointError, match=r'bbox_head\.fc_cls\.weight: '
                       r'base \(4, 256\) vs tuner \(6, 8\)'):
        apply_tuner_checkpoint(str(base), str(tuner))


def test_safetensors_tuner_checkpoint_round_trip(tmp_path, base):
    """`.safetensors` holds the same tensors and meta as `.pth` (no pickle
    at all); apply gives the same full checkpoint; a cut file or one
    without mmpetl meta is refused with a clear error."""
    from safetensors.torch import save_file
    model = trained_petl(base)
    pth, st = tmp_path / 't.pth', tmp_path / 't.safetensors'
    save_tuner_checkpoint(model, str(pth), str(base))
    save_tuner_checkpoint(model, str(st), str(base))
    a, b = load_tuner_checkpoint(str(pth)), load_tuner_checkpoint(str(st))
    assert a['state_dict'].keys() == b['state_dict'].keys()
    assert all(torch.equal(a['state_dict'][k], b['state_dict'][k])
               for k in a['state_dict'])
    meta_a = {k: v for k, v in a['meta'].items() if k != 'time'}
    meta_b = {k: v for k, v in b['meta'].items() if k != 'time'}
    assert json.loads(json.dumps(meta_a)) == meta_b
    full_a = apply_tuner_checkpoint(str(base), str(pth))['state_dict']
    full_b = apply_tuner_checkpoint(str(base), str(st))['state_dict']
    assert full_a.keys() == full_b.keys()
    assert all(torch.equal(full_a[k], full_b[k]) for k in full_a)
    assert not list(tmp_path.glob('.tmp_*'))  # the temporary was renamed
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match='truncated or corrupt'):
        load_tuner_checkpoint(str(cut))
    plain = tmp_path / 'plain.safetensors'
    save_file({'w': torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match='without mmpetl meta'):
        load_tuner_checkpoint(str(plain))
