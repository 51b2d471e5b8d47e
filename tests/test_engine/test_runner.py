"""The PETL model, constructor and hooks inside a real MMEngine Runner.

Runs a few CPU iterations on an in-memory batch: load_from a vanilla
checkpoint (only tuner keys missing), the hooks' reports, checkpoints that
resume under torch's safe ``weights_only`` loading, and that safe loading
still refuses foreign classes.
"""
import copy
import os
import pickle
import subprocess
import sys

import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.runner import Runner
from torch.utils.data import DataLoader, Dataset

from mmpetl.models import build_inner_model
from tests.conftest import det_batch, small_deformable_cfg

ETTA = [dict(type='ParallelAdapter', presets=['ffn'], bottleneck=16),
        dict(type='ScaledPrefix', presets=['attn'], num_prefix=4)]


class FixedDetections(Dataset):
    """Eight uint8 images with boxes, in the packed format of mmdet."""

    def __init__(self):
        inputs, samples = det_batch(num_images=2)
        self.items = [
            dict(inputs=((inputs[i % 2] * 40 + 120).clamp(0, 255).to(
                torch.uint8)), data_samples=samples[i % 2])
            for i in range(8)
        ]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return copy.deepcopy(self.items[index])


def runner_for(work_dir, max_iters, load_from=None, resume=False):
    loader = DataLoader(FixedDetections(), batch_size=2, shuffle=False,
                        collate_fn=pseudo_collate)
    return Runner(
        model=dict(type='mmpetl.PETLModel', model=small_deformable_cfg(),
                   tuners=ETTA, trainable=['bbox_head']),
        work_dir=str(work_dir),
        train_dataloader=loader,
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        optim_wrapper=dict(
            constructor='mmpetl.PETLOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=1e-3),
            clip_grad=dict(max_norm=1.0)),
        default_hooks=dict(
            checkpoint=dict(type='CheckpointHook', interval=2,
                            by_epoch=False),
            logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=[dict(type='mmpetl.ParamReportHook'),
                      dict(type='mmpetl.FrozenCheckHook'),
                      dict(type='mmpetl.TunerCheckpointHook')],
        load_from=load_from,
        resume=resume,
        default_scope='mmdet',
        randomness=dict(seed=0),
        experiment_name=f'exp_{max_iters}_{int(resume)}')


@pytest.fixture(scope='module')
def base_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp('base') / 'vanilla.pth'
    torch.manual_seed(1)
    vanilla = build_inner_model(small_deformable_cfg())
    vanilla.init_weights()
    torch.save(dict(state_dict=vanilla.state_dict(),
                    meta=dict(note='vanilla')), path)
    return path


def read_log(work_dir):
    logs = []
    for root, _, files in os.walk(work_dir):
        logs += [open(os.path.join(root, f)).read() for f in files
                 if f.endswith('.log')]
    return '\n'.join(logs)


def test_train_load_from_and_resume(tmp_path, base_checkpoint):
    runner = runner_for(tmp_path, 4, load_from=str(base_checkpoint))
    runner.train()
    log = read_log(tmp_path)
    assert 'tuner tensors are not in the loaded checkpoint' in log
    assert 'other missing keys: 0' in log
    assert 'TOTAL trainable' in log  # ParamReportHook
    assert 'frozen tensors bit-identical after training' in log
    ckpt = tmp_path / 'iter_4.pth'
    assert ckpt.exists()
    # MMEngine's checkpoint loads with torch's safe loader (the default)
    loaded = torch.load(ckpt, map_location='cpu', weights_only=True)
    assert loaded['meta']['iter'] == 4
    base = torch.load(base_checkpoint, weights_only=True)['state_dict']
    model = runner.model
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(n.startswith('bbox_head.') or '.adapter.' in n
                           or '.prefix.' in n for n in trained)
    current = model.state_dict(keep_vars=True)
    for key, value in base.items():  # frozen weights equal the base
        if not current[key].requires_grad:
            assert torch.equal(current[key].detach(), value), key

    resumed = runner_for(tmp_path, 6, resume=True)
    resumed.train()
    assert resumed.iter == 6
    assert 'resumed' in read_log(tmp_path).lower()
    # the resumed run (load_from None) still ties its tuners to the base
    metas = [torch.load(tmp_path / f'iter_{i}_tuner.pth',
                        weights_only=True)['meta'] for i in (4, 6)]
    assert metas[1]['iter'] == 6
    for key in ('base_checkpoint', 'base_content_sha256',
                'base_content_keys_hash'):
        assert metas[0][key] == metas[1][key], key
    assert metas[1]['base_checkpoint'] == 'vanilla.pth'


def test_safe_loading_without_mmpetl_fails_and_with_it_is_narrow(tmp_path):
    """torch's safe loader refuses MMEngine's checkpoint content unless the
    classes are allow-listed, and still refuses anything else."""
    from mmengine.logging import HistoryBuffer
    buf = HistoryBuffer()
    buf.update(1.5)
    path = tmp_path / 'hub.pth'
    torch.save(dict(message_hub=dict(log_scalars=dict(loss=buf))), path)
    code = (f'import torch\ntry:\n    torch.load({str(path)!r})\n'
            f'    print("loaded")\nexcept Exception as e:\n'
            f'    print("refused", type(e).__name__)')
    plain = subprocess.run([sys.executable, '-c', code], capture_output=True,
                           text=True)
    assert 'refused' in plain.stdout, plain.stderr
    with_mmpetl = subprocess.run(
        [sys.executable, '-c',
         'import mmpetl\nmmpetl.apply_patches()\n' + code],
        capture_output=True, text=True)
    assert 'loaded' in with_mmpetl.stdout, with_mmpetl.stderr

    class Evil:

        def __reduce__(self):
            return (os.system, ('echo pwned > ' + str(tmp_path / 'x'), ))

    evil = tmp_path / 'evil.pth'
    with open(evil, 'wb') as f:
        pickle.dump(dict(state_dict={}, payload=Evil()), f)
    import mmpetl  # noqa: F401  (conftest applied the allow-list)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(evil, weights_only=True)
    assert not (tmp_path / 'x').exists()


def test_non_finite_loss_stops_before_checkpointing(tmp_path, base_checkpoint):
    from mmpetl.engine.hooks import NonFiniteLossError
    runner = runner_for(tmp_path, 4, load_from=str(base_checkpoint))
    runner.register_hook(dict(type='mmpetl.NonFiniteLossHook'))
    model = runner.model
    real_forward = model.forward
    calls = {'n': 0}

    def forward(inputs, data_samples=None, mode='tensor'):
        out = real_forward(inputs, data_samples, mode)
        if mode == 'loss':
            calls['n'] += 1
            if calls['n'] == 4:  # diverges on a checkpointing iteration
                out['loss_cls'] = out['loss_cls'] * float('nan')
        return out

    model.forward = forward
    with pytest.raises(NonFiniteLossError,
                       match=r'iteration 4 on rank\(s\) \[0\]; .*loss_cls.*'
                       r'iter_2\.pth'):
        runner.train()
    assert (tmp_path / 'iter_2.pth').exists()
    assert not (tmp_path / 'iter_4.pth').exists()
    state = torch.load(tmp_path / 'iter_2.pth', weights_only=True)
    assert all(torch.isfinite(v).all() for v in state['state_dict'].values()
               if v.is_floating_point())


def test_tuner_checkpoints_as_safetensors(tmp_path, base_checkpoint):
    from mmpetl.checkpoints import check_base, load_tuner_checkpoint
    runner = runner_for(tmp_path, 2, load_from=str(base_checkpoint))
    runner.register_hook(dict(type='mmpetl.TunerCheckpointHook',
                              file_format='safetensors'))
    runner.train()
    path = tmp_path / 'iter_2_tuner.safetensors'
    assert path.read_bytes()[8:9] == b'{'  # a safetensors JSON header
    ckpt = load_tuner_checkpoint(str(path))
    check_base(ckpt, str(base_checkpoint))  # pinned to the base's tensors
    assert ckpt['meta']['base_content_sha256']
    assert ckpt['meta']['iter'] == 2
    model = runner.model
    for key, value in ckpt['state_dict'].items():
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(ValueError, match="'pth' or 'safetensors'"):
        from mmpetl.engine.hooks import TunerCheckpointHook
        TunerCheckpointHook(file_format='pt')
