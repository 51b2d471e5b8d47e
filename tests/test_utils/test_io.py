"""A job killed while writing a checkpoint leaves the previous one intact."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import mmpetl  # noqa: F401  (conftest applies its patches: the writer)
from mmpetl.utils import load_checkpoint_file

WRITER = '''
import sys, torch
import mmpetl
mmpetl.apply_patches(['atomic_checkpoint_save'])
from mmengine.runner import runner
big = {"state_dict": {f"w{i}": torch.randn(1 << 20) for i in range(400)}}
print("writing", flush=True)
runner.save_checkpoint(big, sys.argv[1])
print("done", flush=True)
'''


def test_kill_mid_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / 'iter_2.pth'
    torch.save({'state_dict': {'w': torch.ones(3)}, 'meta': {'iter': 2}},
               path)
    proc = subprocess.Popen([sys.executable, '-c', WRITER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    lines = iter(proc.stdout.readline, '')  # after mmpetl's log line
    assert any(line.strip() == 'writing' for line in lines)
    time.sleep(0.2)  # 1.6 GB of tensors: still being written
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = load_checkpoint_file(path)
    assert ckpt['meta']['iter'] == 2
    assert torch.equal(ckpt['state_dict']['w'], torch.ones(3))
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    # the half-written temporary file never carries the final name
    assert all(name.startswith('.tmp_') for name in leftovers)


def test_runner_writer_is_atomic(tmp_path):
    from mmengine.runner import runner
    assert getattr(runner.save_checkpoint, 'mmpetl_atomic', False)
    runner.save_checkpoint({'meta': {'iter': 1}}, str(tmp_path / 'a.pth'))
    assert load_checkpoint_file(tmp_path / 'a.pth')['meta']['iter'] == 1
    assert [p.name for p in tmp_path.iterdir()] == ['a.pth']


def test_every_format_gets_normal_file_permissions(tmp_path):
    """mkstemp makes 0600 files; both tuner checkpoint formats (and plain
    atomic saves) end with what open() would give: 0666 & ~umask."""
    from mmpetl.checkpoints import write_tuner_checkpoint
    from mmpetl.utils import atomic_save
    umask = os.umask(0o022)
    try:
        ckpt = {'state_dict': {'w': torch.ones(2)},
                'meta': {'mmpetl_tuner_checkpoint': 1}}
        write_tuner_checkpoint(ckpt, str(tmp_path / 'a_tuner.pth'))
        write_tuner_checkpoint(ckpt, str(tmp_path / 'a_tuner.safetensors'))
        atomic_save(ckpt, str(tmp_path / 'b.pth'))
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes == {'a_tuner.pth': 0o644, 'a_tuner.safetensors': 0o644,
                     'b.pth': 0o644}


def test_a_failed_write_leaves_nothing(tmp_path):
    from mmpetl.utils import atomic_write

    def fail(tmp):
        with open(tmp, 'w') as f:
            f.write('half')
        raise OSError('disk full')

    (tmp_path / 'keep.pth').write_text('old')
    with pytest.raises(OSError, match='disk full'):
        atomic_write(str(tmp_path / 'keep.pth'), fail)
    assert [p.name for p in tmp_path.iterdir()] == ['keep.pth']
    assert (tmp_path / 'keep.pth').read_text() == 'old'
