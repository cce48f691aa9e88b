"""Plan search: Optuna search space, objectives, constraints, seeding, fidelity levels.

- ``space``: fixed-name parameters <-> ``Plan`` (only admissible holes), ``SearchSpace``;
- ``objective``: the single score, constraints and multi-objective values of an evaluation;
- ``samplers``: ``make_sampler`` (TPE, NSGA-II, random, QMC, the GA baseline);
- ``baselines``: random search and the genetic algorithm of the benchmark;
- ``seeding``: geometric starting plans and plans from elsewhere;
- ``fidelity``: coarse exploration, fine confirmation (``TwoFidelity``);
- ``study``: ask/tell helpers and storages (what a Ray driver builds on);
- ``local``: ``run_search``, a whole search in one process.

Nothing here imports ray or grpc.
"""

from optimizer.search.baselines import GeneticSampler, random_search
from optimizer.search.fidelity import Candidate, Refined, TwoFidelity
from optimizer.search.local import (
    ParetoPoint,
    SearchError,
    SearchProgress,
    SearchResult,
    UnmetCriterion,
    run_search,
)
from optimizer.search.objective import (
    OBJECTIVE_NAMES,
    Outcome,
    ScoreBreakdown,
    constraint_names,
    constraints,
    objectives,
    outcome,
    score,
)
from optimizer.search.samplers import (
    DEFAULT_MULTI_OBJECTIVE_SAMPLER,
    DEFAULT_SAMPLER,
    SAMPLERS,
    make_sampler,
)
from optimizer.search.seeding import geometric_seed_params, geometric_seeds, seed_params_from_plans
from optimizer.search.settings import (
    ScoreWeights,
    SearchSettingsError,
    SpaceSettings,
    load_score_weights,
    load_space_settings,
)
from optimizer.search.space import SearchSpace, SearchSpaceError
from optimizer.search.study import (
    Proposal,
    SearchStudyError,
    TrialRecord,
    ask,
    enqueue,
    open_study,
    tell,
    tell_error,
)

__all__ = [
    "DEFAULT_MULTI_OBJECTIVE_SAMPLER",
    "DEFAULT_SAMPLER",
    "OBJECTIVE_NAMES",
    "SAMPLERS",
    "Candidate",
    "GeneticSampler",
    "Outcome",
    "ParetoPoint",
    "Proposal",
    "Refined",
    "ScoreBreakdown",
    "ScoreWeights",
    "SearchError",
    "SearchProgress",
    "SearchResult",
    "SearchSettingsError",
    "SearchSpace",
    "SearchSpaceError",
    "SearchStudyError",
    "SpaceSettings",
    "TrialRecord",
    "TwoFidelity",
    "UnmetCriterion",
    "ask",
    "constraint_names",
    "constraints",
    "enqueue",
    "geometric_seed_params",
    "geometric_seeds",
    "load_score_weights",
    "load_space_settings",
    "make_sampler",
    "objectives",
    "open_study",
    "outcome",
    "random_search",
    "run_search",
    "score",
    "seed_params_from_plans",
    "tell",
    "tell_error",
]
