"""A job killed while writing a checkpoint leaves the previous one intact."""
import os
import signal
import subprocess
import sys
import time

import torch

import mmpetl  # noqa: F401  (patches the Runner's writer)
from mmpetl.utils.checkpoint import load_checkpoint_file

WRITER = '''
import sys, torch
import mmpetl
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
    assert proc.stdout.readline().strip() == 'writing'
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
