"""MetaSchedule budget rules: what ``compiler.trials`` and ``trials_per_task`` mean."""

from pathlib import Path

import pytest

from dlas.compiler.tuning import TUNED_OPS, Tuning, trial_budget


def test_zero_trials_means_a_share_for_every_task():
    assert trial_budget(Tuning(0, 8, Path(".")), n_tasks=16) == 128


def test_explicit_budget_is_kept_and_underbudget_warned(caplog):
    assert trial_budget(Tuning(200, 16, Path(".")), n_tasks=17) == 200
    assert "some tasks get no trial" in caplog.text
    caplog.clear()
    assert trial_budget(Tuning(300, 16, Path(".")), n_tasks=17) == 300
    assert "some tasks get no trial" not in caplog.text


def test_zero_trials_without_a_share_is_an_error():
    with pytest.raises(ValueError, match="trials_per_task"):
        trial_budget(Tuning(0, 0, Path(".")), n_tasks=3)


def test_default_tuned_ops_cover_every_layer4_compute():
    names = ["fused_conv2d_winograd_add_relu", "conv2d_csr", "fused_matmul_add8", "dense_bsr"]
    assert all(any(op in n for op in TUNED_OPS) for n in names)
    assert not any(op in "fused_add_relu" or op in "concatenate" for op in TUNED_OPS)


@pytest.mark.parametrize(
    "per_task, explicit, population",
    [(1, 0, 64), (8, 0, 64), (32, 0, 128), (64, 0, 256), (500, 0, 256), (0, 0, 512), (8, 100, 100)],
)
def test_the_search_population_follows_the_budget(per_task, explicit, population):
    """4 x the candidates a round measures (at most 64 a round), within 64..512; no
    per-task cap keeps MetaSchedule's 512; compiler.population overrides."""
    from dlas.compiler.template_tuning import population_for

    assert population_for(per_task, explicit) == population
