"""Imports flow one way: the library never reaches up, scripts never import scripts.

- `research/` imports nothing from `experiments/`, `benchmarks/` or `tests/`;
- a script (`experiments/*.py`, `benchmarks/*.py`) imports the library and config files
  (`experiments/configs/`), never another script: shared code belongs in `research/`;
- config files import the library and `experiments/configs/common.py` only;
- notebooks import the library only;
- tests import the library, config files and test helpers; a script's own test runs its
  command line (a subprocess), it does not import it.
Imports inside functions count too. Read from the source with `ast`, nothing is run.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(source: str) -> set[str]:
  """Every absolute module an import statement names (`from a.b import c` gives a.b and
  a.b.c, since c may be a module)."""
  out = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      out.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      out.add(node.module)
      out.update(f'{node.module}.{alias.name}' for alias in node.names)
  return out


def project(modules: set[str]) -> set[str]:
  return {m for m in modules if m.split('.')[0] in ('research', 'experiments', 'benchmarks',
                                                     'tests')}


def allowed(kind: str, module: str) -> bool:
  top = module.split('.')[0]
  is_config = module == 'experiments.configs' or module.startswith('experiments.configs.')
  if kind == 'library':
    return top == 'research'
  if kind in ('script', 'benchmark'):
    return top == 'research' or is_config
  if kind == 'config':
    return top == 'research' or is_config
  if kind == 'notebook':
    return top == 'research'
  if kind == 'test':
    return top in ('research', 'tests') or is_config
  raise ValueError(kind)


def sources():
  for path in sorted((ROOT / 'research').rglob('*.py')):
    yield 'library', path, path.read_text()
  for path in sorted((ROOT / 'experiments').rglob('*.py')):
    kind = 'config' if 'configs' in path.parts else 'script'
    yield kind, path, path.read_text()
  for path in sorted((ROOT / 'benchmarks').glob('*.py')):
    yield 'benchmark', path, path.read_text()
  for path in sorted((ROOT / 'tests').rglob('*.py')):
    yield 'test', path, path.read_text()
  for path in sorted((ROOT / 'notebooks').glob('*.ipynb')):
    cells = json.loads(path.read_text())['cells']
    code = '\n'.join(''.join(c['source']) for c in cells if c['cell_type'] == 'code')
    # IPython magics are not Python; they import nothing.
    code = '\n'.join(line for line in code.splitlines() if not line.lstrip().startswith(('%', '!')))
    yield 'notebook', path, code


@pytest.mark.parametrize('kind,path,source', list(sources()),
                         ids=lambda x: str(x.relative_to(ROOT)) if isinstance(x, Path) else None)
def test_imports_flow_one_way(kind, path, source):
  bad = sorted(m for m in project(imported_modules(source)) if not allowed(kind, m))
  # `from experiments.configs import common` also names experiments.configs.common: fine.
  assert not bad, f'{path.relative_to(ROOT)} ({kind}) imports {bad}'


def test_the_check_sees_a_script_importing_a_script():
  found = project(imported_modules('def f():\n  from experiments import prune\n'))
  assert not all(allowed('script', m) for m in found)
  assert all(allowed('script', m) for m in project(imported_modules(
      'from experiments.configs import glue\nfrom research.runs import prune\n')))
