"""The project's shape: no import cycles, arrows point down (bench/import_graph.py)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _graph():
    spec = importlib.util.spec_from_file_location("import_graph", ROOT / "bench" / "import_graph.py")
    graph = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(graph)
    return graph


def test_no_import_cycles_and_no_upward_arrows(capsys):
    code = _graph().main(["--files"])
    out = capsys.readouterr().out
    assert code == 0 and "0 import cycle(s)" in out, out


def test_generation_does_not_import_alignment_and_evaluation_does_not_import_the_trainer():
    graph = _graph()
    known = graph.modules()
    uses = lambda name: graph.imports(name, known[name], set(known))  # noqa: E731
    assert not any(m.startswith("engine.align") for m in uses("engine.generate"))
    assert "engine.align.trainer" not in uses("engine.align.evaluate")
