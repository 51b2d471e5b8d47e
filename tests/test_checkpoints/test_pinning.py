"""Pinning a tuner checkpoint to its base by tensor content.

The pin is a sha256 over the frozen tensors the model held when the tuner
checkpoint was written (names, dtypes, shapes, bytes). These tests move
every trained tensor off its init, so a pin that ignored the trained parts
or the frozen bytes would show.
"""
import hashlib
import re
from types import SimpleNamespace

import pytest
import torch

from mmpetl.checkpoints import (PIN_SHA, BaseMismatchError, UnpinnedTunerError,
                                apply_tuner_checkpoint, base_meta, check_base,
                                load_tuner_checkpoint, save_tuner_checkpoint)
from mmpetl.models import PETLModel, build_inner_model
from tests.conftest import small_detr_cfg

TUNERS = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=4),
          dict(type='LoRA', presets=['attn'], rank=2)]


def petl_on(base_path):
    """A PETL model that loaded ``base_path``; trained tensors moved off
    their init."""
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
    torch.save(dict(state_dict=vanilla.state_dict()), path)
    return path


def file_sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def resave(state, path, **extra):
    torch.save(dict(state_dict={k: v.clone() for k, v in state.items()},
                    **extra), path)


def test_resaved_identical_base_is_accepted(tmp_path, base):
    """Other file bytes (another container, meta, key order), the same
    tensors: the same base. A base whose head differs is accepted too:
    the head is the tuner checkpoint's own."""
    model = petl_on(base)
    tuner = tmp_path / 't.pth'
    save_tuner_checkpoint(model, str(tuner), str(base))
    state = torch.load(base)['state_dict']
    again = tmp_path / 'again.pth'
    resave(dict(reversed(list(state.items()))), again,
           meta=dict(note='re-saved', epoch=3))
    assert file_sha(again) != file_sha(base)
    applied = apply_tuner_checkpoint(str(again), str(tuner))['state_dict']
    assert torch.equal(applied['backbone.conv1.weight'],
                       state['backbone.conv1.weight'])
    check_base(load_tuner_checkpoint(str(tuner)), str(again))
    state['bbox_head.fc_cls.weight'] = state['bbox_head.fc_cls.weight'] + 1
    resave(state, again)
    check_base(load_tuner_checkpoint(str(tuner)), str(again))


def test_one_changed_tensor_is_refused_naming_both_hashes(tmp_path, base):
    """One element of one frozen tensor one float step away, or one frozen
    tensor in another dtype, is another base; the message names the
    recorded pin, the base's and the fix."""
    model = petl_on(base)
    tuner = tmp_path / 't.pth'
    ckpt = save_tuner_checkpoint(model, str(tuner), str(base))
    want = ckpt['meta'][PIN_SHA]
    state = torch.load(base)['state_dict']
    key = 'encoder.layers.1.ffn.layers.1.weight'
    flat = state[key].view(-1)
    flat[7] = torch.nextafter(flat[7], torch.tensor(float('inf')))
    other = tmp_path / 'other.pth'
    resave(state, other)
    with pytest.raises(BaseMismatchError) as info:
        apply_tuner_checkpoint(str(other), str(tuner))
    text = str(info.value)
    hashes = re.findall(r'\b[0-9a-f]{12}\.\.\.', text)
    assert len(hashes) == 2 and hashes[0] == want[:12] + '...'
    assert hashes[1] != hashes[0]
    assert 'same architecture, other weights' in text
    assert 'Use the base it was trained on' in text and '--force-base' in text
    assert 't.pth' in text and 'other.pth' in text
    # the same tensor values in another dtype are another base too
    state = torch.load(base)['state_dict']
    state['backbone.bn1.running_var'] = state['backbone.bn1.running_var'].to(
        torch.float64)
    resave(state, other)
    with pytest.raises(BaseMismatchError, match='other weights'):
        check_base(load_tuner_checkpoint(str(tuner)), str(other))
    # --force-base applies it anyway (same architecture)
    apply_tuner_checkpoint(str(other), str(tuner), force=True)


def test_checked_against_a_model_that_loaded_the_base(tmp_path, base):
    """LoadTunerHook checks the model's frozen tensors, however they were
    loaded: accepted on the base, refused on a changed one."""
    from mmengine.logging import MMLogger

    from mmpetl.engine.hooks.tuner_checkpoint_hook import LoadTunerHook
    model = petl_on(base)
    tuner = tmp_path / 't.pth'
    save_tuner_checkpoint(model, str(tuner), str(base))
    fresh = PETLModel(model=small_detr_cfg(), tuners=TUNERS,
                      trainable=['bbox_head'])
    fresh.load_state_dict(torch.load(base)['state_dict'], strict=False)
    runner = SimpleNamespace(_load_from='https://example.com/base.pth',
                             model=fresh,
                             logger=MMLogger.get_instance('mmpetl_pin'))
    LoadTunerHook(str(tuner)).before_test(runner)
    for key, value in load_tuner_checkpoint(str(tuner))['state_dict'].items():
        assert torch.equal(fresh.state_dict()[key], value), key
    fresh = PETLModel(model=small_detr_cfg(), tuners=TUNERS,
                      trainable=['bbox_head'])  # never loaded the base
    runner.model = fresh
    with pytest.raises(BaseMismatchError, match=r'example\.com/base\.pth '
                       r'has frozen tensors sha256'):
        LoadTunerHook(str(tuner)).before_test(runner)


def test_unpinned_is_refused_unless_forced(tmp_path, base):
    model = petl_on(base)
    tuner = tmp_path / 't.pth'
    save_tuner_checkpoint(model, str(tuner), str(base))
    ckpt = torch.load(tuner, weights_only=True)
    ckpt['meta'] = {k: v for k, v in ckpt['meta'].items()
                    if not k.startswith('base_')}
    torch.save(ckpt, tuner)
    with pytest.raises(UnpinnedTunerError,
                       match=r't\.pth records no base.*force=True '
                       r'\(--force-base\).*re-save it'):
        apply_tuner_checkpoint(str(base), str(tuner))
    applied = apply_tuner_checkpoint(str(base), str(tuner), force=True)
    for key, value in ckpt['state_dict'].items():
        assert torch.equal(applied['state_dict'][key], value), key


def test_url_load_from_still_pins(tmp_path, base):
    """TunerCheckpointHook with `load_from` a URL: the tuner checkpoint is
    pinned to what the model loaded, and that pin accepts the base file."""
    from mmengine.logging import MessageHub, MMLogger

    from mmpetl.engine.hooks.tuner_checkpoint_hook import TunerCheckpointHook
    model = petl_on(base)
    hub = MessageHub.get_instance('mmpetl_pin_url')
    runner = SimpleNamespace(
        model=model, _load_from='https://example.com/models/base.pth',
        message_hub=hub, rank=0, iter=4, epoch=0,
        logger=MMLogger.get_instance('mmpetl_pin_url'))
    hook = TunerCheckpointHook()
    hook.before_train(runner)
    hub.update_info('last_ckpt', str(tmp_path / 'iter_5.pth'))
    hook.after_train_iter(runner, 0)
    tuner = tmp_path / 'iter_5_tuner.pth'
    meta = load_tuner_checkpoint(str(tuner))['meta']
    assert meta['base_checkpoint'] == 'base.pth' and meta['iter'] == 5
    assert meta[PIN_SHA]
    apply_tuner_checkpoint(str(base), str(tuner))  # accepted
    state = torch.load(base)['state_dict']
    state['backbone.conv1.weight'][0, 0, 0, 0] += 1
    resave(state, tmp_path / 'other.pth')
    with pytest.raises(BaseMismatchError, match='other weights'):
        apply_tuner_checkpoint(str(tmp_path / 'other.pth'), str(tuner))


def test_file_pins_of_older_versions_are_still_verified(tmp_path, base):
    """A tuner checkpoint pinned by the base file's sha256: the same file
    passes; a re-saved copy is refused, the message says how to re-pin."""
    model = petl_on(base)
    tuner = tmp_path / 't.pth'
    save_tuner_checkpoint(model, str(tuner), str(base))
    ckpt = torch.load(tuner, weights_only=True)
    ckpt['meta'] = {k: v for k, v in ckpt['meta'].items()
                    if not k.startswith('base_')}
    ckpt['meta'].update(base_meta(str(base)))
    torch.save(ckpt, tuner)
    apply_tuner_checkpoint(str(base), str(tuner))
    again = tmp_path / 'again.pth'
    resave(torch.load(base)['state_dict'], again, meta=dict(x=1))
    with pytest.raises(BaseMismatchError,
                       match=r'file sha256 .*same weights saved again.*'
                       r're-save the tuner checkpoint with this mmpetl'):
        apply_tuner_checkpoint(str(again), str(tuner))


def test_each_frozen_tensor_is_hashed_once_per_save(tmp_path, base,
                                                    monkeypatch):
    """Writing a tuner checkpoint hashes every frozen tensor once and no
    trained one; verifying against a file reads it once per process."""
    from mmpetl.checkpoints import base as base_module
    model = petl_on(base)
    hashed = []
    real = base_module._tensor_sha256
    monkeypatch.setattr(base_module, '_tensor_sha256',
                        lambda t: hashed.append(t.data_ptr()) or real(t))
    ckpt = save_tuner_checkpoint(model, str(tmp_path / 't.pth'), str(base))
    frozen = [k for k in model.state_dict() if k not in ckpt['state_dict']]
    assert len(hashed) == len(frozen) == ckpt['meta']['base_content_tensors']
    loads = []
    real_load = base_module.load_checkpoint_file
    monkeypatch.setattr(base_module, 'load_checkpoint_file',
                        lambda p: loads.append(p) or real_load(p))
    copy = tmp_path / 'copy.pth'
    copy.write_bytes(base.read_bytes())
    for _ in range(3):
        check_base(ckpt, str(copy))
    assert len(loads) == 1
