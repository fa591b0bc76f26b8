"""Scaling-law fit: recovers a known law from noisy runs, bootstrap intervals cover the truth,
the analytic gradient and the closed-form compute optimum agree with numerical ones, bad input
fails with a message, and the plots are written."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from tuning.scaling_fit import (MAX_EXPONENT, PARAMS, ScalingLaw, bootstrap_scaling_law, fit_scaling_law,
                                huber_objective, isoflop_curves, load_fit, plot_scaling, save_fit)

TRUE = ScalingLaw(E=1.7, A=400.0, alpha=0.34, B=410.0, beta=0.28)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def grid_runs(noise: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A 4 x 5 grid of N in 1e5..1e8 and D in 1e6..1e9, losses from TRUE with log-normal noise."""
    N, D = (a.ravel() for a in np.meshgrid(np.geomspace(1e5, 1e8, 4), np.geomspace(1e6, 1e9, 5)))
    loss = TRUE.predict(N, D) * np.exp(np.random.default_rng(seed).normal(0.0, noise, N.size))
    return N, D, loss


@pytest.fixture(scope="module")
def runs():
    return grid_runs()


@pytest.fixture(scope="module")
def boot(runs):
    return bootstrap_scaling_law(*runs, n_boot=100, seed=0)


def test_fit_recovers_the_exponents_of_a_known_law(runs):
    law = fit_scaling_law(*runs)
    assert law.alpha == pytest.approx(TRUE.alpha, rel=0.05)
    assert law.beta == pytest.approx(TRUE.beta, rel=0.05)
    N, D, _ = runs
    np.testing.assert_allclose(law.predict(N, D), TRUE.predict(N, D), rtol=0.02)  # noise is 1 %


def test_the_fit_does_not_depend_on_the_jittered_starts(runs):
    first, other = fit_scaling_law(*runs, seed=0), fit_scaling_law(*runs, seed=3)
    np.testing.assert_allclose(list(other.to_dict().values()), list(first.to_dict().values()), rtol=1e-4)


def test_bootstrap_intervals_cover_the_true_exponents_and_are_not_degenerate(runs, boot):
    assert boot["n_boot"] == 100 and boot["n_groups"] == len(runs[0])
    for name in ("alpha", "beta"):
        low, high = boot["ci"][name]
        assert low < getattr(TRUE, name) < high
        assert 0 < high - low < 0.5 * getattr(TRUE, name)  # informative, not just wide
        assert low <= getattr(boot["point"], name) <= high
        assert boot["samples"][name].shape == (100,)


def test_bootstrap_resamples_whole_groups(runs):
    # Three groups that each hold all the runs: any resample of groups is the same data again,
    # so every refit equals the point fit; resampling single runs would scatter them.
    N, D, loss = (np.tile(a, 3) for a in runs)
    groups = np.repeat(["s1", "s2", "s3"], len(runs[0]))
    result = bootstrap_scaling_law(N, D, loss, groups=groups, n_boot=4)
    assert result["n_groups"] == 3
    np.testing.assert_allclose(result["samples"]["alpha"], result["point"].alpha, rtol=1e-6)
    runs_result = bootstrap_scaling_law(N, D, loss, n_boot=4)
    assert np.ptp(runs_result["samples"]["alpha"]) > 1e-3


@pytest.mark.parametrize("delta", [1e-3, 10.0])  # residuals in the linear and the quadratic zone
def test_analytic_gradient_matches_finite_differences(runs, delta):
    data = tuple(np.log(a) for a in runs)

    def value(theta):
        return huber_objective(theta, *data, delta)[0]

    for theta in ([0.5, 6.0, 0.34, 6.0, 0.28], [0.0, 10.0, 0.8, 3.0, 0.1], [1.0, 2.0, 0.1, 15.0, 1.2]):
        theta = np.array(theta)
        _, grad = huber_objective(theta, *data, delta)
        # central differences: forward ones (approx_fprime) are off by h/2 f'' ~ 1e-4 relative,
        # as log N ~ 15 makes the curvature in alpha and beta large
        numeric = np.array([value(theta + h) - value(theta - h) for h in 1e-6 * np.eye(theta.size)]) / 2e-6
        np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7 * np.abs(numeric).max())


def test_compute_optimum_matches_brute_force_along_the_isoflop_curve():
    budgets = np.array([1e15, 1e18, 1e21])
    n_opt, d_opt = TRUE.compute_optimal(budgets)
    np.testing.assert_allclose(6.0 * n_opt * d_opt, budgets)
    for budget, n in zip(budgets, n_opt):
        best = minimize_scalar(lambda log_n: TRUE.predict(np.exp(log_n), budget / (6.0 * np.exp(log_n))),
                               bounds=(0.0, np.log(budget)), method="bounded", options={"xatol": 1e-9})
        assert np.exp(best.x) == pytest.approx(n, rel=1e-4)
    for (N, D, loss), n, budget in zip(isoflop_curves(TRUE, budgets, n_points=401), n_opt, budgets):
        np.testing.assert_allclose(6.0 * N * D, budget)
        assert N[np.argmin(loss)] == pytest.approx(n, rel=0.02)  # grid step is 30^(2/400) = 1.7 %


def test_compute_optimum_needs_positive_exponents_and_budgets():
    with pytest.raises(ValueError, match="exponents"):
        ScalingLaw(E=1.0, A=1.0, alpha=0.0, B=1.0, beta=0.3).compute_optimal(1e18)
    with pytest.raises(ValueError, match="FLOP budgets"):
        TRUE.compute_optimal(-1.0)


@pytest.mark.parametrize("change, message", [
    (lambda N, D, L: (-N, D, L), "N must be positive and finite: 20 value"),
    (lambda N, D, L: (N, D, np.where(np.arange(L.size) == 3, np.nan, L)), "loss .* index 3"),
    (lambda N, D, L: (N, D[:-1], L), "same length"),
    (lambda N, D, L: (N[:4], D[:4], L[:4]), "at least 5 runs"),
    (lambda N, D, L: (N.reshape(4, 5), D, L), "one-dimensional"),
    (lambda N, D, L: (N, np.where(D > 1e8, 1e8, 1e6), L), "3 distinct D"),
])
def test_invalid_input_fails_with_a_message_that_names_it(runs, change, message):
    with pytest.raises(ValueError, match=message):
        fit_scaling_law(*change(*runs))


def test_bootstrap_rejects_groups_that_do_not_match_the_runs(runs):
    with pytest.raises(ValueError, match="one label per run"):
        bootstrap_scaling_law(*runs, groups=np.zeros(3), n_boot=2)
    with pytest.raises(ValueError, match="at least 2 groups"):
        bootstrap_scaling_law(*runs, groups=np.zeros(len(runs[0])), n_boot=2)


def test_law_and_fit_survive_a_json_round_trip(boot, tmp_path):
    assert ScalingLaw.from_dict(json.loads(json.dumps(TRUE.to_dict()))) == TRUE
    loaded = load_fit(save_fit(boot, tmp_path / "fit" / "scaling_fit.json"))
    assert loaded["point"] == boot["point"] and loaded["ci"] == boot["ci"]
    np.testing.assert_array_equal(loaded["samples"]["beta"], boot["samples"]["beta"])


def test_predict_broadcasts():
    assert TRUE.predict(np.geomspace(1e5, 1e8, 4)[:, None], np.geomspace(1e6, 1e9, 3)).shape == (4, 3)


@pytest.mark.parametrize("spread", [0.0, 0.2])  # a grid, and runs that share no N or D (binned)
def test_plots_are_written(runs, tmp_path, spread):
    N, D, loss = runs
    jitter = np.exp(np.random.default_rng(1).uniform(-spread, spread, (2, N.size)))
    paths = plot_scaling({"N": N * jitter[0], "D": D * jitter[1], "loss": loss}, TRUE, tmp_path / "plots")
    assert [p.name for p in paths] == ["loss_vs_N.png", "loss_vs_D.png", "isoflop.png"]
    for path in paths:
        assert path.read_bytes()[:8] == PNG_SIGNATURE and path.stat().st_size > 10_000


def test_a_flat_size_axis_keeps_the_exponent_bounded():
    # loss that hardly depends on N (models too small to differ, as in a CPU grid): any large alpha with a tiny
    # A fits as well, and the bootstrap's refits must stay finite and inside the bounds
    rng = np.random.default_rng(3)
    N = np.repeat(np.geomspace(3e4, 1e6, 4), 3)
    D = np.tile(np.geomspace(1e5, 5e5, 3), 4)
    loss = (1.5 + 40.0 / D**0.3) * np.exp(0.05 * rng.standard_normal(N.size))
    result = bootstrap_scaling_law(N, D, loss, n_boot=100, seed=0)
    for name in PARAMS:
        assert np.isfinite(result["samples"][name]).all(), name
    assert result["samples"]["alpha"].max() <= MAX_EXPONENT and result["samples"]["beta"].max() <= MAX_EXPONENT
