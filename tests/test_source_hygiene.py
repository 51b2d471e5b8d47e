"""Promises about the source itself: it compiles without warnings on any
supported Python, the torch floor covers the APIs it calls, and the
functions its messages tell users to call exist where they say."""
import importlib
import re
import warnings
from pathlib import Path

import pytest

from mmpetl.utils.compat import SUPPORTED, _parse

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for folder in ('mmpetl', 'tools', 'tests', 'configs')
                 for p in (ROOT / folder).rglob('*.py'))


def test_every_source_file_compiles_with_warnings_as_errors():
    """An invalid escape sequence in a (doc)string is a DeprecationWarning
    on Python 3.11 and a SyntaxWarning from 3.12 (an error in a later
    Python): every file compiles with warnings turned into errors."""
    assert len(SOURCES) > 100
    bad = []
    for path in SOURCES:
        with warnings.catch_warnings():
            warnings.simplefilter('error')
            try:
                compile(path.read_text(), str(path), 'exec')
            except (SyntaxError, SyntaxWarning, DeprecationWarning) as err:
                bad.append(f'{path.relative_to(ROOT)}: {err}')
    assert not bad, '\n'.join(bad)


# torch APIs mmpetl calls unconditionally, and the release that added them
TORCH_APIS = {'torch.library.custom_op': (2, 4, 0),
              'register_fake': (2, 4, 0)}


def test_torch_floor_covers_the_apis_the_package_calls():
    floor = _parse(SUPPORTED['torch'][0])
    package = '\n'.join(p.read_text() for p in (ROOT / 'mmpetl').rglob(
        '*.py'))
    used = {api: since for api, since in TORCH_APIS.items()
            if api in package}
    assert 'torch.library.custom_op' in used  # mmpetl.ops.msda
    for api, since in used.items():
        assert floor >= since, f'{api} needs torch {since}, floor {floor}'


CALL = re.compile(r'(mmpetl(?:\.[a-z_]+)+)\.([A-Za-z_]\w*)\(')


def test_functions_named_in_messages_exist_there():
    """``mmpetl.room.function(...)`` written in the package's strings (what
    an error tells the user to call) resolves to that function."""
    named = set()
    for path in (ROOT / 'mmpetl').rglob('*.py'):
        named |= set(CALL.findall(path.read_text()))
    assert ('mmpetl.models', 'init_prefixes_from_activations') in named
    missing = [f'{m}.{f}' for m, f in sorted(named)
               if not hasattr(importlib.import_module(m), f)]
    assert not missing, missing


def test_prefix_init_message_names_mmpetl_models():
    import torch.nn as nn

    import mmpetl.models
    from mmpetl.tuners import ScaledPrefix
    tuner = ScaledPrefix.from_host(nn.MultiheadAttention(8, 2),
                                   init='activations').train()
    with pytest.raises(RuntimeError) as err:
        tuner._check_ready()
    assert 'mmpetl.models.init_prefixes_from_activations(model, ' \
        'batches)' in str(err.value)
    assert callable(mmpetl.models.init_prefixes_from_activations)
