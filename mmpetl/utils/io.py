"""Atomic file writes and content hashes (no knowledge of models).

Every file mmpetl writes goes to a temporary name in the target folder and
is renamed over the final name, so a job killed mid-write never leaves half
a file under that name. :func:`patch_mmengine_atomic_save` routes MMEngine's
Runner checkpoints through the same writer (only once called, by
:func:`mmpetl.apply_patches`; :func:`unpatch_mmengine_atomic_save` undoes
it).
"""
import hashlib
import os
import tempfile
from typing import Callable

import torch

__all__ = ['atomic_write', 'atomic_save', 'sha256_file',
           'patch_mmengine_atomic_save', 'unpatch_mmengine_atomic_save',
           'mmengine_atomic_save_patched']


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename.

    The file gets the permissions a plain ``open(path, 'w')`` would give
    (``0666 & ~umask``; ``mkstemp`` itself makes ``0600`` files). If
    ``write`` raises, nothing is left behind and ``path`` is unchanged.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1] or '.tmp'
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save(obj, path: str) -> None:
    """``torch.save(obj, path)`` through :func:`atomic_write`."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def mmengine_atomic_save_patched() -> bool:
    """Whether the Runner's ``save_checkpoint`` is mmpetl's atomic one."""
    from mmengine.runner import runner as runner_module
    return getattr(runner_module.save_checkpoint, 'mmpetl_atomic', False)


def patch_mmengine_atomic_save() -> bool:
    """Make MMEngine's Runner write local checkpoints atomically.

    ``Runner.save_checkpoint`` writes the file in place: a job killed
    mid-write leaves a truncated ``iter_N.pth`` that ``last_checkpoint``
    may already name. Local paths now go through :func:`atomic_save` (the
    same bytes: ``torch.save`` of the same dict); other backends keep
    MMEngine's writer. The name patched is ``save_checkpoint`` in
    ``mmengine.runner.runner`` (what ``Runner.save_checkpoint`` calls);
    ``mmengine.runner.checkpoint.save_checkpoint`` is left as it is.

    Returns:
        bool: True if this call installed it (False: already there).
    """
    from mmengine.runner import runner as runner_module
    if mmengine_atomic_save_patched():
        return False
    original = runner_module.save_checkpoint

    def save_checkpoint(checkpoint, filename, file_client_args=None,
                        backend_args=None):
        if '://' in str(filename) or file_client_args or backend_args:
            return original(checkpoint, filename, file_client_args,
                            backend_args)
        atomic_save(checkpoint, str(filename))

    save_checkpoint.mmpetl_atomic = True
    save_checkpoint.original = original
    runner_module.save_checkpoint = save_checkpoint
    return True


def unpatch_mmengine_atomic_save() -> bool:
    """Give the Runner MMEngine's own ``save_checkpoint`` back.

    Returns:
        bool: True if this call removed mmpetl's writer.
    """
    from mmengine.runner import runner as runner_module
    if not mmengine_atomic_save_patched():
        return False
    runner_module.save_checkpoint = runner_module.save_checkpoint.original
    return True
