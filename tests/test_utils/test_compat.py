"""Environment checks: versions and a user's `transformers`."""
import os
import subprocess
import sys

import pytest

from mmpetl.utils import compat


def run_python(code, **env):
    return subprocess.run([sys.executable, '-c', code], capture_output=True,
                          text=True, env={**os.environ, **env})


def test_transformers_is_installed_in_the_test_env():
    # the suite runs as a user with transformers would run it
    import transformers  # noqa: F401


def test_mmdet_models_import_with_transformers_installed():
    proc = run_python('import mmpetl, mmdet.models, mmpretrain.models; '
                      'from mmdet.registry import MODELS; '
                      'print(MODELS.get("DeformableDETR").__name__)')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'DeformableDETR' in proc.stdout


def test_without_the_guard_mmdet_breaks():
    """Why the guard exists: MMPretrain's BLIP code crashes on import."""
    proc = run_python('import mmpetl, mmdet.models',
                      MMPETL_KEEP_MMPRETRAIN_MULTIMODAL='1')
    assert proc.returncode != 0
    assert 'multimodal' in proc.stderr and 'TypeError' in proc.stderr


def test_multimodal_models_become_explained_placeholders():
    proc = run_python(
        'import mmpetl; from mmpretrain.registry import MODELS\n'
        'try:\n    MODELS.get("BlipCaption")()\n'
        'except ImportError as e:\n    print("refused:", e)')
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'refused:' in proc.stdout and 'multi-modal' in proc.stdout


@pytest.mark.parametrize('package,version,expected', [
    ('mmcv', '2.2.0', 'mmcv: 2.2.0 installed, mmpetl supports >=2.0.0,<2.2.0'),
    ('mmdet', '2.28.2', 'mmdet: 2.28.2 installed'),
    ('torch', '2.3.1', 'torch: 2.3.1 installed, mmpetl supports >=2.4.0'),
    ('mmengine', None, 'mmengine: not installed'),
])
def test_version_check_names_installed_and_supported(monkeypatch, package,
                                                     version, expected):
    real = compat._installed
    monkeypatch.setattr(
        compat, '_installed',
        lambda name: version if name == package else real(name))
    with pytest.raises(compat.IncompatibleVersionError) as info:
        compat.check_versions()
    assert expected in str(info.value)
    assert 'make install' in str(info.value)


def test_current_environment_passes_the_check():
    compat.check_versions()
