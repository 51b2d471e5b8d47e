"""The README's method table is the tool's output for every shipped method."""
import re
from pathlib import Path

from tests.conftest import load_script

ROOT = Path(__file__).resolve().parents[1]


def load_tool():
    return load_script('tools/misc/method_table.py')


def test_method_table_rows_cover_every_method_config():
    tool = load_tool()
    readme = (ROOT / 'README.md').read_text()
    table = re.search(re.escape(tool.START) + '(.*?)' + re.escape(tool.END),
                      readme, re.S).group(1)
    shipped = {p.name.split('_')[0] for p in (ROOT / 'configs/methods').glob(
        '*.py')}
    assert shipped == set(tool.METHODS)  # the tool knows every method
    for key in shipped:
        name, formula, where = tool.METHODS[key]
        row = f'| {name} | {formula} | {where} |'
        assert row in table, f'README table lacks {key}: run ' \
            f'tools/misc/method_table.py --write-readme'
    # counts, not placeholders: every applicable cell holds "<n>M (<p>%)"
    assert len(re.findall(r'\d+\.\d\dM \(\d+\.\d\d%\)', table)) == sum(
        1 for _ in (ROOT / 'configs/methods').glob('*.py'))
