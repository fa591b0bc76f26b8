"""Fit the scaling law L(N, D) = E + A/N^alpha + B/D^beta to pretraining runs, with bootstrap intervals.

N is the number of model parameters, D the number of training tokens and L the final loss of
one run. The fit is Hoffmann et al. 2022 ("Chinchilla"), approach 3: with E = exp(e),
A = exp(a), B = exp(b) it minimizes

    sum_i Huber_delta( logsumexp(a - alpha log N_i, b - beta log D_i, e) - log L_i )

by L-BFGS-B from several starting points and keeps the best. Working on log-loss makes every run
count by its relative error, and the Huber loss with a small delta (1e-3) behaves like an absolute
error on the residuals, so one diverged run does not pull the fit. The objective has many local
minima (an exponent near 0 lets A or B stand in for E), so the starts matter:
`fit_scaling_law` evaluates the objective on Chinchilla's whole start grid at once (cheap:
vectorized over all 4500 grid points) and refines only the best point of each of the few best
(alpha, beta) cells.

`bootstrap_scaling_law` refits on resampled groups (runs, or subjects when each run is scored per
held-out subject) and gives percentile intervals; `ScalingLaw.compute_optimal` gives the
compute-optimal split of a FLOP budget C = k N D (k = 6: a forward and backward pass cost about
6 FLOPs per parameter and token); `plot_scaling` draws the fitted law against the runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FormatStrFormatter  # noqa: E402
from scipy.optimize import minimize  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

PARAMS = ("E", "A", "alpha", "B", "beta")  # also the order of theta = (e, a, alpha, b, beta)
MIN_POINTS = 5  # as many as the law has parameters
MIN_DISTINCT = 3  # with two values of N, alpha and A are not separately identifiable (same for D)
# L-BFGS runs of a point fit: the best grid point of the 8 best (alpha, beta) cells. On 12 random
# laws (4x5 grids, 1-3 % noise) the best of 6 always matched the best of all 25 cells plus a start
# at the truth, but sometimes only the 5th best cell reached it; 8 leaves a margin.
DEFAULT_STARTS = 8
# Grid starts per bootstrap refit, next to the warm start at the point estimate: on 45 resamples
# (2 % noise) these 3 runs always reached the optimum of 25 screened starts.
BOOT_GRID_STARTS = 2
# Chinchilla's start grid: e in {-1, ..., 1}, a and b in {0, 5, ..., 25}, alpha and beta in {0, ..., 2}
GRID_AXES = (np.arange(-1.0, 1.01, 0.5), np.arange(0.0, 25.1, 5.0), np.arange(0.0, 2.01, 0.5),
             np.arange(0.0, 25.1, 5.0), np.arange(0.0, 2.01, 0.5))
GRID_STEP = np.array([0.5, 5.0, 0.5, 5.0, 0.5])
# Exponents stay non-negative (a negative one would make loss grow with size or data) and below
# MAX_EXPONENT: where loss hardly changes with N (or D), any large exponent with a tiny coefficient fits
# as well, and an unbounded one ran away until exp(log A) overflowed in a bootstrap refit. Reported
# exponents are below 1; the start grid goes to 2.
MAX_EXPONENT = 4.0
BOUNDS = [(None, None), (None, None), (0.0, MAX_EXPONENT), (None, None), (0.0, MAX_EXPONENT)]
UNITS = {"N": "parameters", "D": "tokens"}


@dataclass
class ScalingLaw:
    """L(N, D) = E + A / N**alpha + B / D**beta: E is the irreducible loss of the data."""

    E: float
    A: float
    alpha: float
    B: float
    beta: float

    def predict(self, N: np.ndarray | float, D: np.ndarray | float) -> np.ndarray:
        """The law's loss at model size N and token count D (broadcast against each other)."""
        N, D = np.asarray(N, dtype=float), np.asarray(D, dtype=float)
        return self.E + self.A / N**self.alpha + self.B / D**self.beta

    def compute_optimal(self, flops: float | np.ndarray,
                        flops_per_param_token: float = 6.0) -> tuple[np.ndarray, np.ndarray]:
        """(N_opt, D_opt) that minimize the loss at a compute budget flops = k N D.

        Putting D = C/(k N) into the law and setting dL/dN = 0 gives
        alpha A N^-alpha = beta B (C/k)^-beta N^beta, so with G = (alpha A / (beta B))^(1/(alpha+beta)):
        N_opt = G (C/k)^(beta/(alpha+beta)) and D_opt = (C/k) / N_opt = G^-1 (C/k)^(alpha/(alpha+beta)).
        """
        if self.alpha <= 0 or self.beta <= 0:
            raise ValueError(f"no compute optimum: exponents alpha={self.alpha}, beta={self.beta} "
                             "must both be positive")
        c = np.asarray(flops, dtype=float) / flops_per_param_token
        if not np.all(np.isfinite(c) & (c > 0)):
            raise ValueError(f"FLOP budgets must be positive and finite, got {flops!r}")
        total = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1.0 / total)
        return g * c ** (self.beta / total), c ** (self.alpha / total) / g

    def to_dict(self) -> dict[str, float]:
        """Plain floats, for JSON."""
        return {name: float(value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict) -> ScalingLaw:
        """The inverse of `to_dict`; raises KeyError naming a missing parameter."""
        return cls(**{name: float(values[name]) for name in PARAMS})


def _law(theta: np.ndarray) -> ScalingLaw:
    e, a, alpha, b, beta = (float(v) for v in theta)
    return ScalingLaw(E=math.exp(e), A=math.exp(a), alpha=alpha, B=math.exp(b), beta=beta)


def _theta(law: ScalingLaw) -> np.ndarray:
    return np.array([math.log(law.E), math.log(law.A), law.alpha, math.log(law.B), law.beta])


def _centre(theta: np.ndarray, n0: float, d0: float) -> np.ndarray:
    """theta for log N - n0 and log D - d0 (a - alpha n0, b - beta d0); -n0, -d0 undo it."""
    e, a, alpha, b, beta = theta
    return np.array([e, a - alpha * n0, alpha, b - beta * d0, beta])


def _terms(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """The law's log-terms (a - alpha log N, b - beta log D, e): shape (..., 3, n) for theta (..., 5)."""
    e, a, alpha, b, beta = np.moveaxis(np.asarray(theta, dtype=float), -1, 0)[..., None]
    n_term, d_term = a - alpha * log_n, b - beta * log_d
    return np.stack([n_term, d_term, np.broadcast_to(e, n_term.shape)], axis=-2)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    return np.where(np.abs(r) <= delta, 0.5 * r**2, delta * (np.abs(r) - 0.5 * delta))


def huber_objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                    delta: float) -> tuple[float, np.ndarray]:
    """The approach-3 objective at theta = (e, a, alpha, b, beta) and its analytic gradient.

    The residual r_i = logsumexp(t_i) - log L_i has dr_i/dt_ij = softmax(t_i)_j, so the gradient
    is a sum of Huber'(r_i) times the softmax weights times each term's derivative; exact and
    about as cheap as one evaluation, where finite differences cost five more.
    """
    terms = _terms(theta, log_n, log_d)
    log_pred = logsumexp(terms, axis=0)
    weights = np.exp(terms - log_pred)
    r = log_pred - log_loss
    slope = np.clip(r, -delta, delta)  # Huber'(r): r inside the quadratic zone, +-delta outside
    n_w, d_w, e_w = slope * weights
    grad = np.array([e_w.sum(), n_w.sum(), -n_w @ log_n, d_w.sum(), -d_w @ log_d])
    return float(_huber(r, delta).sum()), grad


def _log_data(N, D, loss) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated log N, log D, log L; ValueError says which input is wrong and where."""
    arrays = {}
    for name, values in (("N", N), ("D", D), ("loss", loss)):
        array = np.asarray(values, dtype=float)
        if array.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
        bad = np.flatnonzero(~(np.isfinite(array) & (array > 0)))
        if bad.size:
            raise ValueError(f"{name} must be positive and finite: {bad.size} value(s) are not, "
                             f"the first at index {bad[0]} ({array[bad[0]]!r})")
        arrays[name] = array
    lengths = {name: array.size for name, array in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"N, D and loss must have the same length, got {lengths}")
    if lengths["N"] < MIN_POINTS:
        raise ValueError(f"need at least {MIN_POINTS} runs to fit 5 parameters, got {lengths['N']}")
    for name in ("N", "D"):
        if np.unique(arrays[name]).size < MIN_DISTINCT:
            raise ValueError(f"need at least {MIN_DISTINCT} distinct {name} values to fit its exponent, "
                             f"got {np.unique(arrays[name]).tolist()}")
    return np.log(arrays["N"]), np.log(arrays["D"]), np.log(arrays["loss"])


def _start_grid(seed: int) -> np.ndarray:
    """Chinchilla's grid, each point moved at random inside its cell (so the seed varies the starts)."""
    grid = np.stack(np.meshgrid(*GRID_AXES, indexing="ij"), axis=-1).reshape(-1, len(PARAMS))
    grid = grid + np.random.default_rng(seed).uniform(-0.5, 0.5, grid.shape) * GRID_STEP
    grid[:, [2, 4]] = np.abs(grid[:, [2, 4]])  # exponents stay inside the bounds
    return grid


def _grid_starts(grid: np.ndarray, log_n, log_d, log_loss, delta: float, n_starts: int) -> np.ndarray:
    """The lowest-objective grid point of each of the `n_starts` best (alpha, beta) cells.

    One start per cell keeps the starts apart: the very best grid points tend to sit in one basin.
    """
    values = _huber(logsumexp(_terms(grid, log_n, log_d), axis=-2) - log_loss, delta).sum(axis=-1)
    cells = np.round(grid[:, [2, 4]] / GRID_STEP[[2, 4]]) @ [len(GRID_AXES[4]) + 1, 1]
    order = np.argsort(values, kind="stable")
    _, first = np.unique(cells[order], return_index=True)
    return grid[order[np.sort(first)][:n_starts]]


def _refine(starts: np.ndarray, log_n, log_d, log_loss, delta: float) -> np.ndarray:
    """L-BFGS-B from each start; the theta with the lowest objective."""
    # Centering log N and log D decorrelates a from alpha (and b from beta), which are nearly
    # collinear with log N ~ 15: on random laws L-BFGS then needs about 20 % fewer evaluations.
    n0, d0 = log_n.mean(), log_d.mean()

    def objective(centred):
        value, grad = huber_objective(centred, log_n - n0, log_d - d0, log_loss, delta)
        return value / delta, grad / delta  # O(1) values, so the default-scale tolerances mean something

    best_value, best = np.inf, None
    for start in np.atleast_2d(starts):
        result = minimize(objective, _centre(start, n0, d0), jac=True, method="L-BFGS-B", bounds=BOUNDS,
                          options={"maxiter": 1000, "ftol": 1e-12, "gtol": 1e-9})
        if result.fun < best_value:
            best_value, best = result.fun, result.x
    return _centre(best, -n0, -d0)


def fit_scaling_law(N, D, loss, delta: float = 1e-3, n_starts: int | None = None,
                    seed: int = 0) -> ScalingLaw:
    """Fit E + A/N^alpha + B/D^beta to runs (N params, D tokens, final loss) by Chinchilla approach 3.

    `n_starts` L-BFGS-B runs (default 8) start from the screened grid (see the module docstring);
    `seed` moves the grid points inside their cells, so refitting with another seed checks that
    the fit does not hinge on the starts. Raises ValueError on invalid input.
    """
    if not delta > 0:
        raise ValueError(f"delta must be positive, got {delta}")
    n_starts = DEFAULT_STARTS if n_starts is None else n_starts
    if n_starts < 1:
        raise ValueError(f"n_starts must be at least 1, got {n_starts}")
    data = _log_data(N, D, loss)
    return _law(_refine(_grid_starts(_start_grid(seed), *data, delta, n_starts), *data, delta))


def bootstrap_scaling_law(N, D, loss, groups: np.ndarray | None = None, n_boot: int = 200,
                          seed: int = 0, level: float = 0.95, delta: float = 1e-3,
                          n_starts: int | None = None) -> dict:
    """The point fit plus percentile intervals from refits on whole groups resampled with replacement.

    `groups` labels each run's unit of independence (a subject when each run is scored per
    held-out subject); None makes every run its own group. Each refit starts from the point
    estimate and from the 2 best screened grid cells of the whole data, so 200 refits take seconds.
    Returns {"point": ScalingLaw, "ci": {param: (low, high)}, "samples": {param: array (n_boot,)},
    "level", "n_boot", "n_groups"}; `delta`, `n_starts` and `seed` also go to the point fit.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    point = fit_scaling_law(N, D, loss, delta=delta, n_starts=n_starts, seed=seed)
    log_n, log_d, log_loss = _log_data(N, D, loss)
    groups = np.arange(log_n.size) if groups is None else np.asarray(groups)
    if groups.shape != log_n.shape:
        raise ValueError(f"groups must have one label per run ({log_n.size}), got shape {groups.shape}")
    labels, group_of = np.unique(groups, return_inverse=True)
    if labels.size < 2:
        raise ValueError(f"resampling needs at least 2 groups, got {labels.size}")
    members = [np.flatnonzero(group_of == g) for g in range(labels.size)]

    # Screening once on all the data, not per resample: the screen costs about as much as a refit.
    starts = np.vstack([_theta(point), _grid_starts(_start_grid(seed), log_n, log_d, log_loss, delta,
                                             BOOT_GRID_STARTS)])
    rng = np.random.default_rng(seed)
    laws = []
    for _ in range(n_boot):
        rows = np.concatenate([members[g] for g in rng.integers(labels.size, size=labels.size)])
        laws.append(_law(_refine(starts, log_n[rows], log_d[rows], log_loss[rows], delta)))
    samples = {name: np.array([getattr(law, name) for law in laws]) for name in PARAMS}
    tails = 100 * np.array([(1 - level) / 2, (1 + level) / 2])
    ci = {name: tuple(float(v) for v in np.percentile(values, tails)) for name, values in samples.items()}
    return {"point": point, "ci": ci, "samples": samples, "level": level, "n_boot": n_boot,
            "n_groups": int(labels.size)}


def save_fit(result: dict, path: str | Path) -> Path:
    """Write a `bootstrap_scaling_law` result as JSON (the law, intervals and samples); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**result, "point": result["point"].to_dict(),
              "ci": {name: list(bounds) for name, bounds in result["ci"].items()},
              "samples": {name: np.asarray(values).tolist() for name, values in result["samples"].items()}}
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def load_fit(path: str | Path) -> dict:
    """Read a `save_fit` file back into the shape `bootstrap_scaling_law` returns."""
    record = json.loads(Path(path).read_text())
    return {**record, "point": ScalingLaw.from_dict(record["point"]),
            "ci": {name: tuple(bounds) for name, bounds in record["ci"].items()},
            "samples": {name: np.asarray(values) for name, values in record["samples"].items()}}


def isoflop_curves(law: ScalingLaw, flop_budgets, n_points: int = 50, span: float = 30.0,
                   flops_per_param_token: float = 6.0) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each budget C: (N, D, predicted loss) along C = k N D, N from N_opt/span to N_opt*span."""
    curves = []
    for budget in np.atleast_1d(np.asarray(flop_budgets, dtype=float)):
        n_opt, _ = law.compute_optimal(budget, flops_per_param_token)
        n = np.geomspace(n_opt / span, n_opt * span, n_points)
        d = budget / (flops_per_param_token * n)
        curves.append((n, d, law.predict(n, d)))
    return curves


def _levels(values: np.ndarray, max_levels: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """(level of each value, representative of each level): the distinct values of a grid axis,
    or `max_levels` log-spaced bins (geometric means) when the runs do not share values."""
    distinct, index = np.unique(values, return_inverse=True)
    if distinct.size <= max_levels:
        return index, distinct
    edges = np.geomspace(values.min(), values.max(), max_levels + 1)
    index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, max_levels - 1)
    used = np.unique(index)
    reps = np.array([np.exp(np.log(values[index == b]).mean()) for b in used])
    return np.searchsorted(used, index), reps


def _short(value: float) -> str:
    """3 significant digits, exponents without "+0" (1e6 rather than 1e+06)."""
    return f"{value:.3g}".replace("e+0", "e").replace("e+", "e")


def _finish(ax, out: Path, **labels) -> Path:
    """Log axes with plain-number loss ticks (the loss spans less than two decades), grid, legend, PNG."""
    ax.set(xscale="log", yscale="log", **labels)
    for formatter in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        formatter(FormatStrFormatter("%g"))
    ax.tick_params(axis="y", which="minor", labelsize=7)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.savefig(out, dpi=120)
    plt.close(ax.figure)
    return out


def _plot_loss_vs(axis: str, points: dict, law: ScalingLaw, out: Path) -> Path:
    """Loss against N (axis "N", one colour per D level) or against D (the other way round)."""
    other = "D" if axis == "N" else "N"
    x, z, loss = (np.asarray(points[key], dtype=float) for key in (axis, other, "loss"))
    level, reps = _levels(z)
    colours = plt.cm.viridis(np.linspace(0, 0.9, reps.size))
    grid = np.geomspace(x.min() / 2, x.max() * 2, 200)
    _, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    for i, (rep, colour) in enumerate(zip(reps, colours)):
        mine = level == i
        ax.scatter(x[mine], loss[mine], color=colour, s=30, zorder=3)
        curve = law.predict(grid, rep) if axis == "N" else law.predict(rep, grid)
        ax.plot(grid, curve, color=colour, lw=1.5, label=f"{other} = {_short(rep)} {UNITS[other]}")
    if law.E >= loss.min() / 10:
        ax.axhline(law.E, color="grey", ls="--", lw=1, label=f"E = {law.E:.3g} (irreducible)")
    else:  # a fit whose E went to ~0 would stretch the log axis over many empty decades
        ax.plot([], [], color="grey", ls="--", lw=1, label=f"E = {law.E:.3g} (irreducible; far below)")
    ax.plot([], [], "ko", ms=5, label="runs (points), fit (lines)")
    return _finish(ax, out, ylabel="final loss", xlabel=f"{UNITS[axis]} {axis}",
                   title=f"L = {law.E:.3g} + {_short(law.A)}/N^{law.alpha:.3f} + "
                         f"{_short(law.B)}/D^{law.beta:.3f}")


def _plot_isoflop(points: dict, law: ScalingLaw, out: Path, flop_budgets,
                  flops_per_param_token: float) -> Path:
    if flop_budgets is None:  # span the budgets the runs themselves used
        flops = flops_per_param_token * np.asarray(points["N"], float) * np.asarray(points["D"], float)
        flop_budgets = np.geomspace(flops.min(), flops.max(), 5)
    budgets = np.atleast_1d(np.asarray(flop_budgets, dtype=float))
    colours = plt.cm.plasma(np.linspace(0, 0.85, budgets.size))
    n_opt, d_opt = law.compute_optimal(budgets, flops_per_param_token)
    _, ax = plt.subplots(figsize=(7, 5), constrained_layout=True)
    for budget, (n, _, loss), colour in zip(budgets, isoflop_curves(law, budgets, flops_per_param_token=
                                                                    flops_per_param_token), colours):
        ax.plot(n, loss, color=colour, lw=1.5, label=f"C = {_short(budget)} FLOPs")
    ax.plot(n_opt, law.predict(n_opt, d_opt), "k*-", ms=10, lw=1, label="compute-optimal N")
    return _finish(ax, out, xlabel="parameters N", ylabel="predicted loss",
                   title=f"IsoFLOP curves (C = {flops_per_param_token:g} N D): N_opt ~ C^"
                         f"{law.beta / (law.alpha + law.beta):.2f}")


def plot_scaling(points: dict, law: ScalingLaw, out_dir: str | Path, flop_budgets=None,
                 flops_per_param_token: float = 6.0) -> list[Path]:
    """Write loss_vs_N.png, loss_vs_D.png and isoflop.png into `out_dir`; returns their paths.

    `points` holds the runs as arrays "N", "D" and "loss"; the IsoFLOP budgets default to five
    spanning the runs' own compute k N D.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _log_data(points["N"], points["D"], points["loss"])  # the same checks (and messages) as the fit
    return [_plot_loss_vs("N", points, law, out_dir / "loss_vs_N.png"),
            _plot_loss_vs("D", points, law, out_dir / "loss_vs_D.png"),
            _plot_isoflop(points, law, out_dir / "isoflop.png", flop_budgets, flops_per_param_token)]
