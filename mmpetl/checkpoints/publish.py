"""Model-zoo style publishing of a training checkpoint."""
import datetime
import os
from typing import Optional

from mmpetl.utils import atomic_save, load_checkpoint_file, sha256_file

__all__ = ['publish_checkpoint']


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
