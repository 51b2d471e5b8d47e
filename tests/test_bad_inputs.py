"""Every bad input in tests/bad_inputs/ raises its error, and
docs/bad_inputs.md shows exactly that error.

Each case's own ``match`` is written beside its trigger; so that a case
cannot drift into checking nothing, the cases the reliability issues name
are also checked here against an independent statement of what the user
must read: the exception type, a pattern naming the problem and one naming
the fix. Every case's ``match`` must also reject a message that names
nothing.

The tuner-config cases were in tests/test_models/test_bad_configs.py.
"""
import re

import pytest

from mmpetl.apis import ImageReadError, RoutingError, TaskError
from mmpetl.checkpoints import (BaseMismatchError, ShapeMismatchError,
                                UnpinnedTunerError)
from mmpetl.engine.hooks.frozen_check_hook import FrozenParamsChanged
from mmpetl.engine.hooks.non_finite_loss_hook import NonFiniteLossError
from mmpetl.tuners import TunerHostError
from mmpetl.utils import CheckpointError
from mmpetl.utils.config_check import ConfigError
from tests.bad_inputs import DOC, all_cases, check, message, row, run_case

CASES = all_cases()

# name -> (exception type, the problem named, the fix named); written from
# what a user needs to read, not copied from the cases' `match`
EXPECTED = {
    'unknown-tuner': (KeyError, r'unknown tuner type `ParalelAdapter`',
                      r'Did you mean .*ParallelAdapter'),
    'target-typo': (ValueError, r'no module matched.*fnn',
                    r'Nearest module names: .*ffn'),
    'target-regex-nothing': (ValueError, r'no module matched',
                             r'string target is a full-name regex'),
    'adapter-on-attention': (TunerHostError, r'cannot tune .*self_attn',
                             r'Point `targets`/`presets`'),
    'bottleneck-zero': (ValueError, r'`bottleneck` must be a positive int, '
                        r'got 0', r'Set e\.g\. `bottleneck=\d+`'),
    'bottleneck-float': (ValueError, r'`bottleneck` must be a positive '
                         r'int, got 2\.5', r'Set e\.g\. `bottleneck='),
    'prefix-zero': (ValueError, r'`num_prefix` must be a positive int',
                    r'Set e\.g\. `num_prefix='),
    'rank-negative': (ValueError, r'`rank` must be a positive int, got -1',
                      r'Set e\.g\. `rank='),
    'trainable-typo': (ValueError, r"'bbox_haed' matches no module",
                       r"Nearest names: \['bbox_head'"),
    'num-classes-vs-metainfo': (ConfigError, r'num_classes is 80 but .* 5 '
                                r'classes', r'Fix: set `model\.model\.'
                                r'bbox_head\.num_classes=5`'),
    'num-classes-vs-default': (ConfigError, r'num_classes is 3 but .* 80 '
                               r'classes', r'Fix: set .*num_classes=80'),
    'data-not-generated': (ConfigError, r'folder .*petl_demo does not '
                           r'exist', r'Fix: generate the demo data'),
    'ann-file-typo': (ConfigError, r'annotation file .*trian\.json does not '
                      r'exist', r'Fix: .*ann_file='),
    'evaluator-ann-missing': (ConfigError, r'test_evaluator\.ann_file: '
                              r'annotation file .* does not exist',
                              r'Fix: .*test_evaluator\.ann_file='),
    'ckpt-truncated': (CheckpointError, r'cannot load .*iter_200\.pth',
                       r'Re-download or re-save it'),
    'ckpt-pickled-code': (CheckpointError, r'unpickling it would call or '
                          r'create `os\.makedirs`', r'nothing from the file '
                          r'was run.*Use a checkpoint that holds only'),
    'tuner-other-sizes': (ShapeMismatchError, r'12 tensor\(s\) have other '
                          r'shapes', r'use the config it was trained with'),
    'tuner-other-arch': (BaseMismatchError, r'trained on base `base\.pth`.*'
                         r'\b[0-9a-f]{12}\.\.\..*\b[0-9a-f]{12}\.\.\..*'
                         r'different architecture',
                         r'Use the base it was trained on'),
    'tuner-other-base': (BaseMismatchError, r'trained on base `base\.pth`.*'
                         r'\b[0-9a-f]{12}\.\.\..*\b[0-9a-f]{12}\.\.\..*'
                         r'same architecture, other weights',
                         r'Use the base it was trained on, or pass '
                         r'force=True \(--force-base\)'),
    'tuner-unpinned': (UnpinnedTunerError, r'records no base',
                       r'force=True \(--force-base\).*re-save it'),
    'tuner-file-pin-url': (BaseMismatchError, r'pinned to the sha256 of its '
                           r'base file .*is not a local file',
                           r'Give the base checkpoint as a local file, or '
                           r'pass force=True \(--force-base\)'),
    'non-finite-loss': (NonFiniteLossError, r'non-finite loss at iteration '
                        r'42', r'last checkpoint is .*iter_40\.pth.*resume'),
    'frozen-moved': (FrozenParamsChanged, r"1 frozen parameters changed.*"
                     r"'0\.weight'", r'declare parts that should train in '
                     r"the model's `trainable`"),
    'task-unknown': (TaskError, r"unknown task 'shirts'",
                     r'Register it first'),
    'task-other-base': (BaseMismatchError, r'trained on base '
                        r'`other_base\.pth`.*\b[0-9a-f]{12}\.\.\..*'
                        r'\b[0-9a-f]{12}\.\.\.', r'--force-base'),
    'task-classes-vs-head': (ConfigError, r"task 'boots'.*num_classes is 3 "
                             r'but .* 5 classes', r'Fix: set '),
    'image-unreadable': (ImageReadError, r'cannot read image .*photo_017',
                         r'Re-export or remove it'),
    'mixed-merged-lora': (RoutingError, r'LoRA tuners are merged',
                          r'model\.unmerge\(\)'),
    'mixed-unroutable': (RoutingError, r'UniPT cannot compute per sample',
                         r'one task per batch'),
}


def doc_rows():
    return [line for line in DOC.read_text().splitlines()
            if line.startswith('| `')]


def meets_expectation(name: str, err: BaseException):
    """Whether ``err`` is what EXPECTED states for case ``name``, and why
    not."""
    error, problem, fix = EXPECTED[name]
    text = message(err)
    if type(err) is not error:
        return False, (f'{name}: expected {error.__name__}, got '
                       f'{type(err).__name__}: {text[:300]}')
    for what, pattern in (('problem', problem), ('fix', fix)):
        if not re.search(pattern, text, re.S):
            return False, (f'{name}: the message does not name the {what} '
                           f'({pattern!r}): {text[:600]}')
    return True, ''


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path):
    err = run_case(case, tmp_path)
    ok, why = check(case, err, tmp_path)
    assert ok, why
    if case.name in EXPECTED:
        ok, why = meets_expectation(case.name, err)
        assert ok, why
    assert row(case, err, tmp_path) in doc_rows(), (
        f'docs/bad_inputs.md does not show what {case.name} gives now: run '
        f'python tools/misc/bad_input_table.py')


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_case_match_is_specific(case):
    """A case's pattern must not accept a message that names nothing, nor
    a base exception type that any failure would pass."""
    assert case.error not in (BaseException, Exception), case.name
    for vague in ('', 'error', 'Traceback (most recent call last)',
                  'something went wrong: see the log'):
        assert not re.search(case.match, vague, re.S), (case.name, vague)


def test_expectations_catch_a_vague_error():
    """The independent check fails on the right type with a message that
    names neither the problem nor the fix, and on a wrong type."""
    for name, (error, _, _) in EXPECTED.items():
        vague = error('invalid input') if error is not KeyError else \
            KeyError('invalid input')
        assert not meets_expectation(name, vague)[0], name
        assert not meets_expectation(name, RuntimeError('x'))[0], name


def test_table_lists_exactly_the_cases():
    names = [re.match(r'\| `([^`]+)`', line).group(1) for line in doc_rows()]
    assert names == [c.name for c in CASES]
    assert len(set(names)) == len(names)
    areas = {c.area for c in CASES}
    assert {'tuner config', 'config', 'checkpoint', 'training',
            'tasks'} <= areas


def test_issue_cases_exist():
    """Every case the issues name is in the list (and so checked above
    against EXPECTED)."""
    missing = set(EXPECTED) - {c.name for c in CASES}
    assert not missing, missing
