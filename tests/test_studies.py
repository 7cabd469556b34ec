"""The Compare tab's shipped studies: the first edition (no fronts) reads as its per-method table, and a bad
choice gets a clear message. (A study with fronts: tests/test_compare_methods.py ships and draws one.)"""

import gradio as gr
import pytest

from app import studies


def test_every_shipped_study_reads_back_and_one_without_fronts_shows_its_table():
    names = studies.study_names()
    assert {"geometry", "alignment", "colorfulness", "alignment+geometry"} <= set(names)
    for name in names:
        figure, table, info, methods = studies.view(name)
        study = studies.read_study(name)
        assert len(table) == len(study.table) and f"**{name}**" in info
        assert methods["choices"] and all((study.folder / m / "adapter").is_dir() for m in methods["choices"])
        if not study.fronts:  # one final point per method against KID
            assert "has no fronts" in figure.layout.title.text and len(figure.data) == len(study.table)
            assert [t.y[0] for t in figure.data] == list(study.table["delta_reward_mean"])
            assert {"method", "final reward", "Δ reward"} <= set(table.columns)
            assert "this study has no eps_kl" in studies.front_figure(study, "eps_kl").layout.annotations[0].text


def test_bad_choices_are_refused_with_a_message():
    with pytest.raises(gr.Error, match="No shipped study 'nope'"):
        studies.view("nope")
    with pytest.raises(gr.Error, match="Choose a shipped study"):
        studies.beside_base("geometry", None)
    with pytest.raises(gr.Error, match="ships no adapter"):
        studies.beside_base("geometry", "nope")
    figure, table, info, methods = studies.view(None)
    assert info == "No study is shipped." and table.empty and methods["choices"] == []


def test_a_shipped_studys_runs_are_found_where_ship_runs_puts_them(tmp_path):
    from engine.align import shipped

    assert shipped.run_folder(tmp_path, "refl") == tmp_path / "refl"
    assert shipped.run_folder(tmp_path, "refl", "seed2") == tmp_path / "refl" / "seeds" / "seed2"
    for seed in ("seed10", "seed2", "seedx"):
        (shipped.run_folder(tmp_path, "refl", seed) / "adapter").mkdir(parents=True)
    (tmp_path / "refl" / "seeds" / "seed3").mkdir()  # no adapter: not a run the studio can load
    assert [p.name for p in shipped.other_seeds(tmp_path / "refl")] == ["seed2", "seed10"]
