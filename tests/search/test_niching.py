"""ectplan's GA: parents from one needle count's niche part of the time."""

from __future__ import annotations

import optuna
import pytest

from optimizer.search.niching import NichedGeneticSampler
from optimizer.search.space import SearchSpace


@pytest.fixture(scope="module")
def space(phantom_case, ect):
    return SearchSpace(phantom_case, ect)


def study_with(space: SearchSpace, n: int, passes, seed: int = 0) -> optuna.Study:
    """``n`` random trials, told with score = needle count and ``passed`` from ``passes``."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask(space.distributions())
        needles = space.n_needles(trial.params)
        trial.set_user_attr("passed", passes(needles))
        study.tell(trial, float(needles))
    return study


def pools(sampler: NichedGeneticSampler, study: optuna.Study, draws: int):
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return [sampler._breeding_pool(study, done) for _ in range(draws)]


def test_a_passing_best_breeds_niches_of_fewer_needles(space):
    # Only plans of 4 or more needles pass: the best passing plan has 4, the niches are 2 and 3.
    study = study_with(space, 80, lambda n: n >= 4)
    sampler = NichedGeneticSampler(space, population_size=6, niche_prob=1.0, seed=0)
    counts = [{space.n_needles(t.params) for t in pool} for pool in pools(sampler, study, 40)]
    assert all(len(c) == 1 for c in counts), "a niche pool mixes needle counts"
    assert {next(iter(c)) for c in counts} == {2, 3}


def test_two_train_niches_also_hold_fewer_core_needles(phantom_case, irect):
    # Score = core needles, passing only with 3 or more: the best passing plan has 3 core
    # needles, so besides the needle-count niches below its count there is a niche of plans
    # with 2 core needles (one IRE pair), whatever their needle count.
    space = SearchSpace(phantom_case, irect)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(120):
        trial = study.ask(space.distributions())
        cores = len(space.core_slots(trial.params))
        trial.set_user_attr("passed", cores >= 3)
        study.tell(trial, float(cores))
    best = min((t for t in study.trials if t.user_attrs["passed"]), key=lambda t: t.value)
    best_needles = space.n_needles(best.params)
    sampler = NichedGeneticSampler(space, population_size=6, niche_prob=1.0, seed=0)
    kinds = set()
    for pool in pools(sampler, study, 60):
        needles = {space.n_needles(t.params) for t in pool}
        cores = {len(space.core_slots(t.params)) for t in pool}
        if len(needles) == 1 and next(iter(needles)) < best_needles:
            kinds.add("needles")
        else:
            assert cores == {2}, "a niche pool is neither one needle count nor 2 core needles"
            kinds.add("cores")
    assert kinds == {"needles", "cores"}


def test_while_no_plan_passes_it_is_the_baseline_ga(space):
    study = study_with(space, 80, lambda n: False)
    sampler = NichedGeneticSampler(space, population_size=6, niche_prob=1.0, seed=0)
    elite = sorted(study.trials, key=lambda t: t.value)[:6]
    for pool in pools(sampler, study, 10):
        assert [t.value for t in pool] == [t.value for t in elite]


def test_without_niches_it_is_the_baseline_ga(space):
    study = study_with(space, 40, lambda n: n >= 4)
    sampler = NichedGeneticSampler(space, population_size=6, niche_prob=0.0, seed=0)
    done = study.get_trials(deepcopy=False)
    elite = sorted(done, key=lambda t: (not t.user_attrs["passed"], t.value))[:6]
    for pool in pools(sampler, study, 5):
        assert [t.number for t in pool] == [t.number for t in elite]


def test_same_seed_same_proposals(space):
    def proposals(seed: int) -> list[dict]:
        study = study_with(space, 30, lambda n: n >= 3)
        study.sampler = NichedGeneticSampler(space, population_size=8, seed=seed)
        out = []
        for _ in range(20):
            trial = study.ask(space.distributions())
            trial.set_user_attr("passed", True)
            study.tell(trial, float(space.n_needles(trial.params)))
            out.append(trial.params)
        return out

    assert proposals(5) == proposals(5)


def test_niche_probability_is_checked(space):
    with pytest.raises(ValueError, match="niche_prob"):
        NichedGeneticSampler(space, niche_prob=1.5)
    with pytest.raises(ValueError, match="drop_prob"):
        NichedGeneticSampler(space, drop_prob=-0.1)


class RecordingNichedGA(NichedGeneticSampler):
    """Records which trial numbers were bred (the rest were random)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bred: list[int] = []

    def _breeding_pool(self, study, done):
        self.bred.append(self._asking)
        return super()._breeding_pool(study, done)

    def sample_relative(self, study, trial, search_space):
        self._asking = trial.number
        return super().sample_relative(study, trial, search_space)


def seeded_run(space: SearchSpace, passes_from: int | None) -> RecordingNichedGA:
    """22 trials, the first 5 enqueued seeds; trial numbers from ``passes_from`` on pass."""
    sampler = RecordingNichedGA(space, population_size=6, niche_prob=0.0, drop_prob=0.0, seed=4)
    study = optuna.create_study(sampler=sampler)
    seeds = []
    for s in range(5):
        probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=s))
        seeds.append(probe.ask(space.distributions()).params)
        study.enqueue_trial(seeds[-1])
    for _ in range(22):
        trial = study.ask(space.distributions())
        trial.set_user_attr("passed", passes_from is not None and trial.number >= passes_from)
        study.tell(trial, float(space.n_needles(trial.params)))
    assert [t.params for t in study.trials[:5]] == seeds
    return sampler


def test_random_start_interleaves_with_breeding_on_top_of_the_seeds(space):
    """Population 6: trial 5 completes the first generation; then, while no plan passes, odd
    trials stay random until 12 plans of its own are evaluated (trial 17); even ones are bred."""
    assert seeded_run(space, None).bred == [6, 8, 10, 12, 14, 16, 17, 18, 19, 20, 21]


def test_once_a_plan_passes_every_child_is_bred(space):
    assert seeded_run(space, 9).bred == [6, 8, 10, *range(11, 22)]


def ask_bred(
    space: SearchSpace, sampler: NichedGeneticSampler, study: optuna.Study, n: int
) -> list[dict]:
    """The parameters of ``n`` children asked after ``study``'s trials (told as failing)."""
    study.sampler = sampler
    out = []
    for _ in range(n):
        trial = study.ask(space.distributions())
        trial.set_user_attr("passed", False)
        study.tell(trial, 100.0)
        out.append(trial.params)
    return out


def test_one_of_the_best_passing_plans_loses_one_needle(space):
    """drop_prob 1: every child is one of the best ``population_size`` passing plans (here:
    those of 4 or more needles, the fewest needles best) with one needle taken out, and no plan
    is proposed twice."""
    study = study_with(space, 60, lambda n: n >= 4)
    ranked = sorted(
        (t for t in study.trials if t.user_attrs["passed"]), key=lambda t: (t.value, t.number)
    )
    assert len(ranked) > 6

    def variants(trials) -> list[dict]:
        return [
            space.without_needle(t.params, k) for t in trials
            for k in range(space.n_needles(t.params))
        ]  # fmt: skip

    best = variants(ranked[:6])
    sampler = NichedGeneticSampler(space, population_size=6, drop_prob=1.0, seed=1)
    children = ask_bred(space, sampler, study, 12)
    assert all(child in best for child in children)
    assert len({sampler._identity(c) for c in children}) == len(children)


def test_no_needle_is_dropped_below_the_minimum_or_before_a_pass(space, monkeypatch):
    """Only plans at the minimum pass, or none does: every child is bred as by the GA, and
    the move draws no random number, so drop_prob 1 proposes what drop_prob 0 does."""

    def never(params, slot):
        raise AssertionError(f"dropped slot {slot} of {params}")

    monkeypatch.setattr(space, "without_needle", never)
    for passes in (lambda n: n == space.n_min, lambda n: False):
        proposals = [
            ask_bred(
                space,
                NichedGeneticSampler(space, population_size=20, drop_prob=p, seed=1),
                study_with(space, 40, passes),
                8,
            )
            for p in (0.0, 1.0)
        ]
        assert proposals[0] == proposals[1]
