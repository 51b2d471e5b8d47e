"""Every Runner `make demo` builds runs with mmpetl's patches.

The suite applies the patches in conftest, so an in-process demo test
cannot see a run that lacks them. `make demo` trains its base as a plain
detector (no PETLModel, which would apply them): without
``history_buffer_state`` MMEngine pickles ``getattr`` references into the
checkpoint and publishing the base then fails under safe loading (seen
on 2026-12-04 after the patches stopped being applied at import). Checked
in a fresh interpreter, where nothing applied them before.
"""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, sys
sys.path.insert(0, 'tools/demo')
import mmpetl
import run_demo

before = mmpetl.applied_patches()
seen = {}

class Stop(Exception):
    pass

class FakeRunner:
    @classmethod
    def from_cfg(cls, cfg):
        seen['at_runner'] = mmpetl.applied_patches()
        raise Stop()

run_demo.Runner = FakeRunner
try:
    run_demo.train_run(None)
except Stop:
    pass
print(json.dumps(dict(before=before, at_runner=seen['at_runner'],
                      all=sorted(mmpetl.PATCHES))))
'''


def test_demo_runners_see_every_patch():
    out = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # import alone applies only the transformers guard (if anything) ...
    assert 'history_buffer_state' not in result['before']
    # ... and the demo's Runners get all of them
    assert sorted(result['at_runner']) == result['all'] or set(
        result['all']) - set(result['at_runner']) <= {
            'mmpretrain_multimodal_guard'}, result
    assert 'history_buffer_state' in result['at_runner']
