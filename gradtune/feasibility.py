"""Steer a sampler away from configurations predicted to diverge.

TPE told about divergence (a violated constraint) puts diverged trials in its "bad"
density, but that density also holds every mediocre trial, so a region that diverges next
to the best trials is still proposed about as often as its neighbours: in a learning-rate
or init-scale sweep the optimum sits at the edge of stability, and a third or more of what
TPE draws late in a sweep falls over the edge (``benchmarks/search.py``, edge space).
:class:`FeasibleSampler` adds the missing feasibility model, in the spirit of c-TPE
(Watanabe & Hutter, 2023) and constrained Bayesian optimisation (Gardner et al., 2014): a
Gaussian-process classifier fitted to the finished trials (stable vs diverged) scores each
proposal of the wrapped sampler, and a proposal predicted more likely to diverge than not
is drawn again; if the sampler keeps proposing risky points, the safe candidate nearest the
best stable trial runs instead (see :class:`FeasibleSampler`).

NaN and inf: the model reads only parameters and the constraint Optuna stores (finite by
construction: gradtune's searcher sets +1 or -1); objective values are never read.

Only the wrapped sampler's *relative* (model-based) proposals are screened: its random
start-up trials explore as they would, which is what gives the classifier both classes.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import optuna
from numpy.typing import NDArray
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

log = logging.getLogger(__name__)

# Proposals drawn per trial from the base sampler: from its joint model, then from its
# per-parameter model. If all look risky, the safe one of LOCAL_CANDIDATES random
# candidates nearest the best stable trial runs; if none is safe, the least risky draw.
ATTEMPTS = 4
LOCAL_CANDIDATES = 64
# The classifier learns from the most recent finished trials only: a Laplace GP
# classifier's fit grows with the cube of its data (measured with 8 features on 2 cores:
# about 0.1 s at 100 trials, 1.1-1.4 s at 200, 2.4-2.7 s at 300). The base sampler still
# learns from every trial.
MAX_TRIALS = 100
# Accept a proposal whose predicted probability of diverging is below this.
MAX_RISK = 0.5


def encode(params: dict[str, Any], space: dict[str, BaseDistribution]) -> list[float]:
    """``params`` as a vector in the unit cube: numbers scaled to [0, 1] over their range
    (log-scaled where the distribution is), choices one-hot. A parameter missing from
    ``params`` (a conditional one that did not apply) encodes as zeros."""
    vec: list[float] = []
    for name, dist in sorted(space.items()):
        value = params.get(name)
        if isinstance(dist, CategoricalDistribution):
            vec.extend(float(value == choice) for choice in dist.choices)
            continue
        if value is None:
            vec.append(0.0)
            continue
        if not isinstance(dist, (FloatDistribution, IntDistribution)):
            raise TypeError(f"cannot encode {name!r}: unknown distribution {dist!r}")
        low, high, x = float(dist.low), float(dist.high), float(value)
        if dist.log:
            low, high, x = math.log(low), math.log(high), math.log(x)
        vec.append((x - low) / (high - low) if high > low else 0.0)
    return vec


class RiskModel:
    """P(diverged | params), from finished trials labelled by their ``diverged`` constraint
    (the last ``MAX_TRIALS`` of them, in trial order).

    Needs at least one stable and one diverged trial; before that :meth:`risk` is None.
    """

    def __init__(self, trials: Sequence[FrozenTrial], space: dict[str, BaseDistribution],
                 constraint: str) -> None:
        self.space = space
        labelled = [t for t in trials if constraint in t.constraints][-MAX_TRIALS:]
        y = [int(t.constraints[constraint] > 0) for t in labelled]
        self.model: Any = None
        if 0 < sum(y) < len(y):
            from sklearn.gaussian_process import GaussianProcessClassifier
            from sklearn.gaussian_process.kernels import RBF, ConstantKernel

            x = np.array([encode(t.params, space) for t in labelled])
            # Divergence boundaries are sharp in a few directions (init scale, learning rate)
            # and flat in others, so the length scale is fitted, within a sane range.
            kernel = ConstantKernel(1.0, (0.1, 100.0)) * RBF(np.full(x.shape[1], 0.3), (0.03, 3.0))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # convergence chatter on tiny data sets
                self.model = GaussianProcessClassifier(kernel, random_state=0).fit(x, y)

    def risk(self, params: dict[str, Any]) -> float | None:
        return None if self.model is None else float(self.risks([params])[0])

    def risks(self, candidates: Sequence[dict[str, Any]]) -> NDArray[np.float64]:
        """The risk of each candidate, in one prediction; needs a fitted model."""
        assert self.model is not None, "risks() before both outcomes were seen"
        # scikit-learn is untyped (self.model is Any): predict_proba gives float64 columns.
        proba: NDArray[np.float64] = self.model.predict_proba([encode(c, self.space) for c in candidates])
        return proba[:, 1]


class FeasibleSampler(optuna.samplers.BaseSampler):
    """Wraps ``base`` (e.g. TPE): a relative proposal predicted to diverge
    (risk >= ``MAX_RISK``) is drawn again, ``ATTEMPTS`` times from the base's joint model and
    ``ATTEMPTS`` times parameter by parameter, and the first draw below the risk bound runs.
    If none is, the safe one of ``LOCAL_CANDIDATES`` random candidates nearest (in the unit
    cube of :func:`encode`) the best stable trial runs; if none of those is safe either, the
    least risky draw.

    Why the local fallback: at the edge of stability the best trials border the unstable
    region, and a base sampler that keeps proposing over the edge is telling the truth about
    where the good trials are; a random safe point often lands in the dull region far from
    them (in ``benchmarks/search.py``'s edge space, where gradients vanish), the safe point
    nearest the best stable trial keeps the search beside them.

    ``constraint`` names the ``Trial.set_constraint`` key that is > 0 for a diverged trial.
    """

    def __init__(self, base: optuna.samplers.BaseSampler, constraint: str,
                 seed: int | None = None) -> None:
        self.base = base
        self.random = optuna.samplers.RandomSampler(seed=seed)
        self.constraint = constraint
        self.screened = 0  # proposals drawn again, for tests and logs

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        first = self.base.sample_relative(study, trial, search_space)
        if not first:
            return first  # start-up or empty space: the base sampler explores
        finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        model = RiskModel(finished, search_space, self.constraint)
        risky: list[tuple[float, dict[str, Any]]] = []
        for params in self._draws(study, trial, search_space, first):
            risk = model.risk(params)
            if risk is None or risk < MAX_RISK:
                return self._keep(trial, params, risk, len(risky), "base sampler")
            risky.append((risk, params))
        local = self._near_best(study, trial, search_space, model, finished)
        if local is not None:
            return self._keep(trial, local[1], local[0], len(risky), "nearest the best stable trial")
        # Nothing looks safe: keep the least risky (the classifier may be wrong, and the
        # search must go on). TPE's constant liar records its last draw for this trial,
        # but reads a running trial's suggested params over that record.
        risk, params = min(risky, key=lambda d: d[0])
        return self._keep(trial, params, risk, len(risky), "least risky")

    def _keep(self, trial: FrozenTrial, params: dict[str, Any], risk: float | None,
              screened: int, source: str) -> dict[str, Any]:
        self.screened += screened
        log.debug("trial %d: %d proposals screened out, kept one (%s) with divergence risk %s: %s",
                  trial.number, screened, source, risk, params)
        return params

    def _draws(
        self, study: optuna.Study, trial: FrozenTrial, space: dict[str, BaseDistribution],
        first: dict[str, Any],
    ) -> Iterator[dict[str, Any]]:
        yield first
        for _ in range(ATTEMPTS - 1):
            yield self.base.sample_relative(study, trial, space)
        # The joint model keeps proposing the unstable region (its "bad" density is diluted
        # by every mediocre trial): draw each parameter on its own instead, from the base
        # sampler's per-parameter model.
        for _ in range(ATTEMPTS):
            yield {name: self.base.sample_independent(study, trial, name, dist)
                   for name, dist in space.items()}

    def _near_best(
        self, study: optuna.Study, trial: FrozenTrial, space: dict[str, BaseDistribution],
        model: RiskModel, finished: Sequence[FrozenTrial],
    ) -> tuple[float, dict[str, Any]] | None:
        """(risk, params) of the random candidate predicted safe that lies nearest the best
        stable trial of ``finished``; None in a multi-objective study, without a stable
        completed trial with a finite value, or when no candidate looks safe. Called only
        once ``model`` is fitted (else the first draw would have run)."""
        if len(study.directions) > 1:
            return None
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        stable = [(sign * t.value, t.number, t.params) for t in finished
                  if t.state == TrialState.COMPLETE
                  and t.constraints.get(self.constraint, 0.0) <= 0
                  and t.value is not None and math.isfinite(t.value)]
        if not stable:
            return None
        best = np.asarray(encode(min(stable)[2], space))  # the earliest of equal bests
        candidates = [{name: self.random.sample_independent(study, trial, name, dist)
                       for name, dist in space.items()} for _ in range(LOCAL_CANDIDATES)]
        risks = model.risks(candidates)
        safe = [i for i in range(len(candidates)) if risks[i] < MAX_RISK]
        if not safe:
            return None
        distance = [float(np.linalg.norm(np.asarray(encode(candidates[i], space)) - best)) for i in safe]
        i = safe[int(np.argmin(distance))]  # the first of equal distances, as drawn
        return float(risks[i]), candidates[i]

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self.base.sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
        self.random.reseed_rng()
