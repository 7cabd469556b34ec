"""The study's intervals and verdict words (engine.study.stats): what a reader of its report relies on."""

import numpy as np
import pandas as pd
import pytest

from engine.study import stats


def test_cells_pair_each_prompt_with_its_base_over_evaluation_seeds():
    run = pd.DataFrame({"prompt": [0, 0, 1, 1], "seed": [0, 1, 0, 1], "heldout": [1.0, 3.0, 5.0, 5.0]})
    base = pd.DataFrame({"prompt": [1, 1, 0, 0], "seed": [1, 0, 1, 0], "heldout": [4.0, 4.0, 1.0, 1.0]})  # another order
    cells = stats.cell_deltas([stats.paired_assets(run, base)], "heldout")
    assert cells.tolist() == [[1.0, 1.0]]  # prompt 0: mean(1-1, 3-1); prompt 1: 5-4
    other = run.assign(prompt=[0, 0, 2, 2])
    with pytest.raises(ValueError, match="different prompts"):
        stats.cell_deltas([stats.paired_assets(run, base), stats.paired_assets(other, base.assign(prompt=[2, 2, 0, 0]))], "heldout")


def test_interval_covers_the_mean_and_shrinks_with_more_prompts():
    rng = np.random.default_rng(1)
    few, many = rng.normal(0.1, 0.2, (3, 8)), rng.normal(0.1, 0.2, (3, 128))
    m, lo, hi = stats.interval(few)
    assert lo < m < hi and m == pytest.approx(few.mean())
    _, lo2, hi2 = stats.interval(many)
    assert hi2 - lo2 < (hi - lo) / 2 and lo2 > 0  # 128 prompts at +0.1 ± 0.2: the interval excludes 0
    assert stats.interval(few) == stats.interval(few)  # seeded: the report is reproducible


def test_verdict_words_follow_the_interval_only():
    assert stats.verdict(0.01, 0.2) == "reproduced" and stats.verdict(-0.2, -0.01) == "contradicted"
    assert stats.verdict(-0.01, 0.2) == "not reproduced at this budget"
    assert stats.verdict(-0.2, -0.01, better_is_positive=False) == "reproduced"  # lower is better (e.g. KID)
    assert stats.verdict(float("nan"), 1.0) == "not reproduced at this budget"


def test_difference_pairs_prompts_between_methods():
    rng = np.random.default_rng(0)
    hard = rng.normal(0, 1.0, 24)  # prompt difficulty shared by both methods: pairing cancels it
    a, b = hard + 0.05 + rng.normal(0, 0.01, (2, 24)), hard + rng.normal(0, 0.01, (3, 24))
    gap, lo, hi = stats.difference(a, b)
    assert gap == pytest.approx(a.mean() - b.mean()) and 0 < lo < gap < hi
    with pytest.raises(ValueError, match="different prompts"):
        stats.difference(a, b[:, :5])
