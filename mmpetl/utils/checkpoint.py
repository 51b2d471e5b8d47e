"""Tuner-only checkpoints: write, verify against a base, apply, publish.

A tuner checkpoint holds only what a PETL run trained (tuner tensors and the
declared trainable parts such as the heads) plus ``meta``::

    meta = dict(
        mmpetl_tuner_checkpoint=1,      # format marker
        mmpetl_version='0.1.0',
        tuners=[...], trainable=[...],  # the PETLModel's config
        base_sha256='...',              # sha256 of the base checkpoint file
        base_keys_hash='...',           # sha256 of its sorted (key, shape) list
        base_checkpoint='name.pth',
        lora_scaling={'<tuner key prefix>': alpha / r, ...})

One shared base checkpoint plus a small tuner checkpoint per task rebuild
the full model. Files are written to a temporary name and renamed, so a
killed job never leaves a half-written checkpoint under the final name.

A path ending in ``.safetensors`` stores the same content as safetensors
(tensors + ``meta`` as JSON in the file's metadata): no pickle at all.
"""
import datetime
import hashlib
import json
import os
import re
import tempfile
from typing import Dict, Optional

import torch

__all__ = [
    'sha256_file', 'keys_hash', 'atomic_save', 'load_checkpoint_file',
    'tuner_checkpoint', 'save_tuner_checkpoint', 'load_tuner_checkpoint',
    'apply_tuner_checkpoint', 'publish_checkpoint', 'BaseMismatchError',
    'CheckpointError', 'ShapeMismatchError', 'check_shapes',
    'patch_mmengine_atomic_save', 'write_tuner_checkpoint'
]

MARKER = 'mmpetl_tuner_checkpoint'


class CheckpointError(RuntimeError):
    pass


class BaseMismatchError(CheckpointError):
    pass


class ShapeMismatchError(CheckpointError):
    pass


def check_shapes(expected: Dict, given: Dict, what: str, fix: str,
                 expected_name: str = 'model', given_name: str = 'file',
                 show: int = 10) -> None:
    """Raise naming every key whose shape differs (the first ``show``).

    ``expected``/``given`` map keys to tensors (or anything with
    ``.shape``); keys in only one of them are not checked here.
    """
    bad = [(k, tuple(expected[k].shape), tuple(v.shape))
           for k, v in given.items()
           if k in expected and tuple(expected[k].shape) != tuple(v.shape)]
    if not bad:
        return
    listed = '\n'.join(f'  {k}: {expected_name} {a} vs {given_name} {b}'
                        for k, a, b in bad[:show])
    more = f'\n  ... and {len(bad) - show} more' if len(bad) > show else ''
    raise ShapeMismatchError(
        f'{what}: {len(bad)} tensor(s) have other shapes than the '
        f'{expected_name} (a different architecture or tuner config):\n'
        f'{listed}{more}\n{fix}')


def sha256_file(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()


def keys_hash(state_dict: Dict[str, torch.Tensor]) -> str:
    """Identity of an architecture: its sorted keys and shapes."""
    items = sorted((k, tuple(v.shape)) for k, v in state_dict.items())
    return hashlib.sha256(repr(items).encode()).hexdigest()


def atomic_save(obj, path: str) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix='.pth', dir=folder)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _torch_reason(err: Exception) -> str:
    """The informative part of torch.load's error, without its advice
    (torch's weights-only message suggests ``weights_only=False``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if lines and lines[0].startswith('Weights only load failed'):
        keep = [line.split('WeightsUnpickler error:')[-1].strip()
                for line in lines[1:]
                if not line.startswith('Check the documentation')]
        text = ' '.join(k for k in keep if k) or 'weights-only load failed'
    else:
        text = lines[0].split('. ')[0] if lines else ''
    return text[:200]


def load_checkpoint_file(path: str) -> Dict:
    """Load a checkpoint with torch's safe loader and a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as err:  # corrupt, truncated, or unsafe content
        found = re.search(r'GLOBAL ([\w.]+)', str(err))
        if found:  # the unpickler refused a callable/class before running it
            raise CheckpointError(
                f'refused to load {path}: unpickling it would call or '
                f'create `{found.group(1)}`, which safe loading (torch.load '
                f'weights_only=True) does not allow. The file carries '
                f'pickled code or objects of a class that is not '
                f'allow-listed; mmpetl never unpickles code, and nothing '
                f'from the file was run. Use a checkpoint that holds only '
                f'tensors and plain containers (re-save its state_dict where '
                f'you trust its source).') from err
        raise CheckpointError(
            f'cannot load {path} with safe loading ({type(err).__name__}: '
            f'{_torch_reason(err)}). The file is truncated, '
            f'corrupt, not a torch checkpoint, or carries pickled code; '
            f'mmpetl never unpickles code. Re-download or re-save it.'
        ) from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f'{path} holds a {type(ckpt).__name__}, not a '
                              f'checkpoint dict')
    return ckpt


def _state_dict_of(ckpt: Dict) -> Dict[str, torch.Tensor]:
    state = ckpt.get('state_dict', ckpt)
    return {k[len('module.'):] if k.startswith('module.') else k: v
            for k, v in state.items() if isinstance(v, torch.Tensor)}


def tuner_checkpoint(model, base_path: Optional[str] = None,
                     extra_meta: Optional[Dict] = None) -> Dict:
    """The tuner checkpoint dict of a ``PETLModel``."""
    from mmpetl.tuners import LoRAFusedAttention, LoRALinear
    state = {k: v.detach().cpu() for k, v in model.tuner_state_dict().items()}
    lora = {
        name + '.': float(t.scaling)
        for name, t in model.tuner_modules()
        if isinstance(t, (LoRALinear, LoRAFusedAttention))
    }
    meta = {
        MARKER: 1,
        'mmpetl_version': __import__('mmpetl').__version__,
        'tuners': [dict(c) for c in getattr(model, 'tuner_cfgs', [])],
        'trainable': list(getattr(model, 'trainable_patterns', [])),
        'base_checkpoint': None,
        'base_sha256': None,
        'base_keys_hash': None,
        'lora_scaling': lora,
        'time': datetime.datetime.now().isoformat(timespec='seconds'),
    }
    if base_path:
        meta['base_checkpoint'] = os.path.basename(base_path)
        meta['base_sha256'] = sha256_file(base_path)
        meta['base_keys_hash'] = keys_hash(
            _state_dict_of(load_checkpoint_file(base_path)))
    meta.update(extra_meta or {})
    return {'state_dict': state, 'meta': meta}


SAFETENSORS_META = 'mmpetl_meta'


def _is_safetensors(path: str) -> bool:
    return str(path).endswith('.safetensors')


def write_tuner_checkpoint(ckpt: Dict, path: str) -> None:
    """Write a tuner checkpoint dict atomically: torch format, or
    safetensors when ``path`` ends in ``.safetensors``."""
    if not _is_safetensors(path):
        atomic_save(ckpt, path)
        return
    from safetensors.torch import save_file
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp_', suffix='.safetensors',
                               dir=folder)
    os.close(fd)
    try:  # safetensors refuses shared or strided storage: own copies
        save_file({k: v.detach().cpu().contiguous().clone()
                   for k, v in ckpt['state_dict'].items()}, tmp,
                  metadata={SAFETENSORS_META: json.dumps(ckpt['meta'])})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_safetensors(path: str) -> Dict:
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise FileNotFoundError(f'checkpoint not found: {path}')
    try:
        with safe_open(path, framework='pt', device='cpu') as f:
            metadata = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:
        raise CheckpointError(
            f'cannot read {path} as safetensors ({type(err).__name__}: '
            f'{str(err)[:200]}): the file is truncated or corrupt. Re-copy '
            f'it, or use the `.pth` tuner checkpoint of the same run.'
        ) from err
    try:
        meta = json.loads(metadata[SAFETENSORS_META])
    except (KeyError, ValueError) as err:
        raise CheckpointError(
            f'{path} is a safetensors file without mmpetl meta '
            f'(`{SAFETENSORS_META}` in its metadata): not an mmpetl tuner '
            f'checkpoint. Write it with save_tuner_checkpoint(model, '
            f'\'x.safetensors\').') from err
    return {'state_dict': state, 'meta': meta}


def save_tuner_checkpoint(model, path: str, base_path: Optional[str] = None,
                          extra_meta: Optional[Dict] = None) -> Dict:
    ckpt = tuner_checkpoint(model, base_path, extra_meta)
    write_tuner_checkpoint(ckpt, path)
    return ckpt


def load_tuner_checkpoint(path: str) -> Dict:
    """A tuner checkpoint, ``.pth`` (safe loading) or ``.safetensors``."""
    ckpt = _load_safetensors(path) if _is_safetensors(path) else \
        load_checkpoint_file(path)
    if not ckpt.get('meta', {}).get(MARKER):
        raise CheckpointError(
            f'{path} is not an mmpetl tuner checkpoint (no meta.{MARKER}); '
            f'pass it as the base checkpoint instead, or give the '
            f'`*_tuner.pth` file written beside each training checkpoint.')
    return ckpt


def check_base(tuner_ckpt: Dict, base_path: str, base_state: Dict,
               force: bool = False) -> None:
    """Refuse a base checkpoint other than the one the tuners trained on."""
    meta = tuner_ckpt['meta']
    want_sha, want_keys = meta.get('base_sha256'), meta.get('base_keys_hash')
    if want_sha is None:
        return
    got_sha = sha256_file(base_path)
    if got_sha == want_sha:
        return
    same_arch = keys_hash(base_state) == want_keys
    message = (
        f'this tuner checkpoint was trained on base '
        f'`{meta.get("base_checkpoint")}` (sha256 {want_sha[:12]}...), but '
        f'{base_path} has sha256 {got_sha[:12]}... '
        + ('(same architecture, other weights)' if same_arch else
           '(a different architecture: its keys/shapes differ)') +
        '. Use the base it was trained on, or pass force=True '
        '(--force-base) to apply it anyway.')
    if not force or not same_arch:
        raise BaseMismatchError(message)


def _merge_lora(state: Dict[str, torch.Tensor],
                scaling: Dict[str, float]) -> Dict[str, torch.Tensor]:
    """Fold LoRA into the frozen weights: W += s * B @ A; drop LoRA keys."""
    state = dict(state)
    for prefix, scale in scaling.items():
        a = state.pop(prefix + 'lora_A')
        b = state.pop(prefix + 'lora_B')
        host = prefix[:-len('lora.')]
        key = host + 'in_proj_weight' if host + 'in_proj_weight' in state \
            else host + 'weight'
        state[key] = state[key] + scale * (b.float() @ a.float()).to(
            state[key].dtype)
    return state


def _under_patterns(key: str, patterns) -> bool:
    """Whether ``key`` is a parameter of a module (or is a parameter)
    that PETLModel's ``trainable`` patterns name."""
    from mmpetl.injection import name_matches
    from mmpetl.models.petl_model import _is_regex
    parts = key.split('.')
    prefixes = ['.'.join(parts[:i]) for i in range(1, len(parts) + 1)]
    return any(
        name_matches(prefix, pattern if _is_regex(pattern) else [pattern])
        for pattern in patterns for prefix in prefixes)


def apply_tuner_checkpoint(base_path: str, tuner_path: str,
                           out_path: Optional[str] = None,
                           merge_lora: bool = False,
                           force: bool = False) -> Dict:
    """base + tuners -> one full checkpoint (model-zoo style).

    Args:
        base_path: the shared base checkpoint.
        tuner_path: a tuner checkpoint written by mmpetl.
        out_path: where to write the result (atomic); None: only return it.
        merge_lora: fold LoRA tuners into the base weights (their keys are
            then gone; other tuners stay as tuner keys).
        force: apply to a base with other weights (same architecture).

    Returns:
        dict: ``{'state_dict', 'meta'}``.
    """
    tuner = load_tuner_checkpoint(tuner_path)
    base = load_checkpoint_file(base_path)
    state = _state_dict_of(base)
    check_base(tuner, base_path, state, force)
    tuned = tuner['state_dict']
    # parts trained beside the tuners (the heads) replace the base's even
    # when their shapes differ: a new dataset has its own classes
    patterns = tuner['meta'].get('trainable', [])
    check_shapes(state, {k: v for k, v in tuned.items()
                         if not _under_patterns(k, patterns)},
                 f'{tuner_path} does not fit {base_path}',
                 'Use the base checkpoint the tuners were trained on.',
                 expected_name='base', given_name='tuner')
    state.update(tuned)
    if merge_lora and tuner['meta'].get('lora_scaling'):
        state = _merge_lora(state, tuner['meta']['lora_scaling'])
    meta = dict(base.get('meta', {}) or {})
    meta['mmpetl'] = {k: v for k, v in tuner['meta'].items() if k != MARKER}
    meta['mmpetl']['lora_merged'] = bool(merge_lora)
    result = {'state_dict': state, 'meta': meta}
    if out_path:
        atomic_save(result, out_path)
    return result


def publish_checkpoint(in_path: str, out_stem: str,
                       date: Optional[str] = None) -> str:
    """MMDetection model-zoo style: optimizer and runner state stripped,
    meta kept, saved as ``{out_stem}_{YYYYMMDD}-{sha256[:8]}.pth`` (the
    hash prefix torch.hub / MMEngine check on download)."""
    ckpt = load_checkpoint_file(in_path)
    for key in ('optimizer', 'message_hub', 'param_schedulers',
                'ema_state_dict'):
        ckpt.pop(key, None)
    date = date or datetime.date.today().strftime('%Y%m%d')
    folder = os.path.dirname(os.path.abspath(out_stem))
    tmp = os.path.join(folder, f'.publish_{os.getpid()}.pth')
    atomic_save(ckpt, tmp)
    sha = sha256_file(tmp)
    final = f'{out_stem}_{date}-{sha[:8]}.pth'
    os.replace(tmp, final)
    return final


def patch_mmengine_atomic_save() -> None:
    """Make MMEngine's Runner write local checkpoints atomically.

    ``Runner.save_checkpoint`` writes the file in place: a job killed
    mid-write leaves a truncated ``iter_N.pth`` that ``last_checkpoint``
    may already name. Local paths now go through :func:`atomic_save`
    (temporary file + rename); other backends keep MMEngine's writer.
    Idempotent.
    """
    from mmengine.runner import runner as runner_module
    original = runner_module.save_checkpoint
    if getattr(original, 'mmpetl_atomic', False):
        return

    def save_checkpoint(checkpoint, filename, file_client_args=None,
                        backend_args=None):
        if '://' in str(filename) or file_client_args or backend_args:
            return original(checkpoint, filename, file_client_args,
                            backend_args)
        atomic_save(checkpoint, str(filename))

    save_checkpoint.mmpetl_atomic = True
    runner_module.save_checkpoint = save_checkpoint
