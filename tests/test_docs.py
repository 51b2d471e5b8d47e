"""docs/methods.md's method tables are the tool's output for every shipped
method; the README links the pages it summarises."""
import json
import re
from pathlib import Path

from tests.conftest import load_tool

ROOT = Path(__file__).resolve().parents[1]


def test_method_table_rows_cover_every_method_config():
    tool = load_tool('tools/misc/method_table.py')
    doc = (ROOT / tool.DOC).read_text()
    table = re.search(re.escape(tool.START) + '(.*?)' + re.escape(tool.END),
                      doc, re.S).group(1)
    configs = tool.method_configs()  # +ckpt variants have no row
    shipped = set(configs)
    assert shipped == set(tool.METHODS)  # the tool knows every method
    for key in shipped:
        name, formula, where = tool.METHODS[key]
        row = f'| {name} | {formula} | {where} |'
        assert row in table, f'{tool.DOC} lacks {key}: run ' \
            f'tools/misc/method_table.py --write'
    # counts, not placeholders: every applicable cell holds "<n>M (<p>%)"
    assert len(re.findall(r'\d+\.\d\dM \(\d+\.\d\d%\)', table)) == sum(
        len(paths) for paths in configs.values())


def test_method_table_holds_the_measured_accuracy():
    """The accuracy part of the method tables is the accuracy benchmarks'
    JSON as it is now (rerun ``method_table.py --write`` after them)."""
    tool = load_tool('tools/misc/method_table.py')
    doc = (ROOT / tool.DOC).read_text()
    accuracy = tool.accuracy_table()
    assert accuracy in doc, f'{tool.DOC}: stale accuracy table: run ' \
        f'tools/misc/method_table.py --write'
    # every benchmarked method has a row, with numbers in it
    for path, _ in tool.ACCURACY:
        rows = json.loads((ROOT / path).read_text())['rows']
        for r in rows:
            name = tool.FORMS.get(r['method']) or \
                tool.METHODS[r['method']][0]
            assert f"| {name} |" in accuracy
            assert f"{r['mean']:.3f} ± {r['std']:.3f}" in accuracy


def test_readme_links_resolve():
    """Every relative link of the README and the benchmarks page names a
    file that exists (the long tables live there, not in the README)."""
    for page in ('README.md', 'benchmarks/README.md', 'docs/methods.md'):
        text = (ROOT / page).read_text()
        for target in re.findall(r'\]\(([^)#:]+)(?:#[^)]*)?\)', text):
            assert (ROOT / page).parent.joinpath(target).exists(), \
                f'{page} links to a missing {target}'
