"""Every bad input we know of, what triggers it, and the error it must give.

One list, two users:

* ``tests/test_bad_inputs.py`` runs each case and checks the exception
  type and message, and that ``docs/bad_inputs.md`` shows that message;
* ``tools/misc/bad_input_table.py`` runs each case and writes
  ``docs/bad_inputs.md`` (bad input | what the user sees).

A case's ``trigger(tmp)`` gets an empty temporary folder and must raise.
Messages are shown with that folder as ``$TMP`` and sha256 prefixes as
``<sha>`` so the table does not change from run to run.

One module per area; :func:`all_cases` gives them in the table's order.
A new case goes into the list of its area.
"""
from typing import List

from .checkpoints import CHECKPOINT_CASES
from .common import DOC, ROOT, Case, demo_cfg, demo_layout
from .config import CONFIG_CASES
from .runtime import LOADING_CASES
from .table import check, message, normalise, row, run_case, table
from .tasks import TASK_CASES
from .tools import TOOL_CASES
from .training import TRAINING_CASES
from .tuners import TUNER_CASES

__all__ = [
    'Case', 'DOC', 'ROOT', 'all_cases', 'check', 'demo_cfg', 'demo_layout',
    'message', 'normalise', 'row', 'run_case', 'table'
]


def all_cases() -> List[Case]:
    return (TUNER_CASES + CONFIG_CASES + CHECKPOINT_CASES + TASK_CASES +
            TRAINING_CASES + TOOL_CASES + LOADING_CASES)
