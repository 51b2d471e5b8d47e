"""Every bad input in tests/bad_inputs.py raises its error, and
docs/bad_inputs.md shows exactly that error.

The tuner-config cases were in tests/test_models/test_bad_configs.py.
"""
import re

import pytest

from tests.bad_inputs import DOC, all_cases, check, row, run_case

CASES = all_cases()


def doc_rows():
    return [line for line in DOC.read_text().splitlines()
            if line.startswith('| `')]


@pytest.mark.parametrize('case', CASES, ids=[c.name for c in CASES])
def test_bad_input(case, tmp_path):
    err = run_case(case, tmp_path)
    ok, why = check(case, err, tmp_path)
    assert ok, why
    assert row(case, err, tmp_path) in doc_rows(), (
        f'docs/bad_inputs.md does not show what {case.name} gives now: run '
        f'python tools/misc/bad_input_table.py')


def test_table_lists_exactly_the_cases():
    names = [re.match(r'\| `([^`]+)`', line).group(1) for line in doc_rows()]
    assert names == [c.name for c in CASES]
    assert len(set(names)) == len(names)
    areas = {c.area for c in CASES}
    assert {'tuner config', 'config', 'checkpoint', 'training',
            'tasks'} <= areas


def test_cases_cover_the_issue():
    """The bad inputs the reliability issue names are all in the table."""
    names = {c.name for c in CASES}
    assert {
        'unknown-tuner', 'target-typo', 'target-regex-nothing',
        'adapter-on-attention', 'bottleneck-zero', 'bottleneck-float',
        'prefix-zero', 'rank-negative', 'trainable-typo',
        'num-classes-vs-metainfo', 'num-classes-vs-default',
        'data-not-generated', 'ann-file-typo', 'evaluator-ann-missing',
        'ckpt-truncated', 'ckpt-pickled-code', 'tuner-other-sizes',
        'tuner-other-arch', 'tuner-other-base', 'non-finite-loss',
        'frozen-moved'} <= names


def test_cases_cover_the_tasks_issue():
    """Bad inputs of serving several tasks (inference, switching, mixed
    batches) are in the table."""
    names = {c.name for c in CASES}
    assert {'task-unknown', 'task-other-base', 'task-classes-vs-head',
            'image-unreadable', 'mixed-merged-lora',
            'mixed-unroutable'} <= names
