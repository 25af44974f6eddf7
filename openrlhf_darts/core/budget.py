"""The candidate budget M_total (DARTS_SPEC.md §3(e)).

``fixed_budget`` is the default: M_total = round(avg * N). ``utility_budget`` picks the average M̄ that maximizes
U(M̄) = E(M̄) - λ·T(M̄) by replaying recorded candidate lengths through the plan, selection and the cost model:

- E(M̄): relative reduction of the kept set's mean length against M̄ = M (no redundancy, every candidate kept);
- T(M̄): the step's rollout time (the slowest engine's) divided by its value at M̄ = M.

Both are means over bootstrap draws (``draw_replay``). The draws are shared by every grid point (common random
numbers): a prompt with m candidates uses the first m of its drawn candidates, so differences between grid points are
not sampling noise. At every grid point the replay builds the batch's plans with ``allocation.build_plans`` from the
batch's own weights, exactly as the planner does, so the replayed plan is the one that will run, tail pruning included
(``replay_budget``), and selects and stops each group under the run's ``--darts.truncated`` rule.
"""

import heapq
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from openrlhf_darts.core._checks import check_bool, check_choice, check_int, check_real, check_sequence
from openrlhf_darts.core.allocation import TAIL_PRUNE_SCHEDULES, build_plans, num_long_for
from openrlhf_darts.core.cost_model import _effective_lengths, _rollout_time
from openrlhf_darts.core.dual_end import _select
from openrlhf_darts.core.types import TRUNCATED_RULES, GroupPlan

MAX_GRID_POINTS = 64

Replay = list[list[list[tuple[int, bool]]]]  # [draws][num_prompts][max_candidates] (length, truncated)


def fixed_budget(num_prompts: int, avg_candidates: float, min_candidates: int, max_candidates: int) -> int:
    """M_total = round(avg_candidates * num_prompts) (§3(e), fixed mode); avg must lie in [min, max]."""
    check_int("num_prompts", num_prompts, minimum=1)
    check_real("--darts.avg_candidates", avg_candidates)
    _check_bounds(min_candidates, max_candidates)
    if not min_candidates <= avg_candidates <= max_candidates:
        raise ValueError(
            f"--darts.avg_candidates={avg_candidates} is outside [--darts.min_candidates, --darts.max_candidates] = "
            f"[{min_candidates}, {max_candidates}]; set an average inside the bounds"
        )
    # avg * N lies between the integers N * min and N * max, so rounding cannot leave the range.
    return round(avg_candidates * num_prompts)


@dataclass(frozen=True)
class BudgetChoice:
    """The budget ``utility_budget`` chose, the plans it replayed for it and the utility curve behind it (§3(e))."""

    budget: int  # M_total, candidates for the whole step
    avg_candidates: float  # M̄ = M_total / N
    utility: float  # U(M̄) = effectiveness - cost_weight * time_ratio
    effectiveness: float  # E(M̄): relative reduction of the kept mean length against M̄ = M
    time_ratio: float  # T(M̄) / T(M)
    grid: tuple[tuple[float, float], ...]  # [G] (M̄, U(M̄)) for every grid point, M̄ ascending
    plans: tuple[GroupPlan, ...]  # [N] the plans replayed at the chosen budget, one per prompt of the batch
    rollout_time_s: float  # T(M̄) in seconds: the slowest engine's cost-model time, mean over the draws
    kept_length_mean: float  # mean length of the kept samples at M̄, pooled over the draws (E's numerator side)

    def __post_init__(self) -> None:
        check_int("budget", self.budget, minimum=1)
        for name in ("avg_candidates", "utility", "effectiveness", "time_ratio", "rollout_time_s", "kept_length_mean"):
            object.__setattr__(self, name, check_real(name, getattr(self, name)))
        if not isinstance(self.grid, tuple) or len(self.grid) == 0:
            raise ValueError(f"grid={self.grid!r} must be a non-empty tuple of (avg_candidates, utility) pairs")
        if not isinstance(self.plans, tuple) or not all(isinstance(plan, GroupPlan) for plan in self.plans):
            raise TypeError(f"plans={self.plans!r} must be a tuple of GroupPlan, one per prompt")
        planned = sum(plan.num_candidates for plan in self.plans)
        if planned != self.budget:
            raise ValueError(f"plans hold {planned} candidates but budget={self.budget}; expected the budget's plans")


def utility_budget(
    history: Sequence[Sequence[tuple[int, bool]]],
    num_prompts: int,
    num_keep: int,
    num_long: int,
    min_candidates: int,
    max_candidates: int,
    cost_weight: float,
    per_token_latency: Callable[[int], float],
    num_engines: int = 1,
    tail_prune: str = "paper",
    draws: int = 8,
    seed: int = 0,
    weights: Sequence[float] | None = None,
    tie_keys: Sequence[str] | None = None,
    truncated_rule: str = "exclude",
) -> BudgetChoice:
    """argmax over a grid of M̄ in [min_candidates, max_candidates] of U = E - cost_weight * T (§3(e), utility mode).

    ``history`` holds, per recorded prompt, its candidates' (length, truncated) as if each had run to its end: an
    aborted candidate's partial length understates its true one, so record it imputed from its group's fit
    (``length_fit.impute_aborted``), never as a finished length. ``draw_replay`` makes the bootstrap draws, and
    ``replay_budget`` scores each budget with this batch's ``weights`` (normalized, as the planner allocates with them;
    None = equal), ``tie_keys`` and ``truncated_rule`` (``--darts.truncated``). The grid has steps of 1/N, thinned to
    at most 64 points; ties go to the smaller budget.
    """
    _check_bounds(min_candidates, max_candidates)
    samples = draw_replay(history, num_prompts, max_candidates, draws, seed)
    return replay_budget(
        samples, num_keep, num_long, min_candidates, max_candidates, cost_weight, per_token_latency, num_engines,
        tail_prune, weights, tie_keys, truncated_rule,
    )  # fmt: skip


def draw_replay(
    history: Sequence[Sequence[tuple[int, bool]]], num_prompts: int, max_candidates: int, draws: int, seed: int
) -> Replay:
    """[draws][num_prompts][max_candidates] bootstrap candidates: per draw and prompt, a recorded prompt drawn at
    random, then ``max_candidates`` of its candidates drawn with replacement (``random.Random(seed)``)."""
    observations = _check_history(history)
    check_int("num_prompts", num_prompts, minimum=1)
    check_int("max_candidates", max_candidates, minimum=1)
    check_int("draws", draws, minimum=1)
    check_int("seed", seed)
    rng = random.Random(seed)
    samples = []
    for _ in range(draws):
        drawn = []
        for _ in range(num_prompts):
            prompt = observations[rng.randrange(len(observations))]
            drawn.append([prompt[rng.randrange(len(prompt))] for _ in range(max_candidates)])
        samples.append(drawn)
    return samples


def replay_budget(
    samples: Replay,
    num_keep: int,
    num_long: int,
    min_candidates: int,
    max_candidates: int,
    cost_weight: float,
    per_token_latency: Callable[[int], float],
    num_engines: int = 1,
    tail_prune: str = "paper",
    weights: Sequence[float] | None = None,
    tie_keys: Sequence[str] | None = None,
    truncated_rule: str = "exclude",
) -> BudgetChoice:
    """``utility_budget`` over given draws: ``samples[d][p]`` holds prompt p's candidates in draw d (§3(e)).

    At each budget the plans are ``build_plans(weights, budget, ...)``, the planner's own call. A prompt with M'_p
    candidates decodes the effective lengths (``cost_model.effective_lengths``) of its first M'_p drawn candidates and
    keeps what ``select_dual_end`` keeps, both under ``truncated_rule``: with ``long_end`` a dual-end group keeps its
    truncated candidates as its long end, and a shortest-only group stops after its first num_keep stops of any kind
    (in this lockstep model the num_keep shortest, a truncated candidate counting at its cap). Prompts go to engines as
    the samples generator sends them: in order, each to the engine with the least candidates so far (ties: lowest
    index); a step lasts as long as its slowest engine.
    """
    check_int("num_keep", num_keep, minimum=1)
    _check_bounds(min_candidates, max_candidates)
    if min_candidates < num_keep:
        raise ValueError(
            f"min_candidates={min_candidates} is below num_keep={num_keep}; every prompt needs at least num_keep "
            "candidates (the paper uses min_candidates = num_keep)"
        )
    check_choice("tail_prune", tail_prune, TAIL_PRUNE_SCHEDULES)
    check_choice("truncated_rule", truncated_rule, TRUNCATED_RULES)
    num_long_for(min_candidates, max_candidates, num_long, tail_prune, num_keep=num_keep)  # checks num_long
    cost_weight = check_real("cost_weight", cost_weight, minimum=0.0)
    if not callable(per_token_latency):
        raise TypeError(f"per_token_latency={per_token_latency!r} is not callable; expected a PerTokenLatency")
    check_int("num_engines", num_engines, minimum=1)
    samples = _check_samples(samples, max_candidates)
    num_prompts = len(samples[0])
    if weights is None:
        weights = [1.0] * num_prompts
    check_sequence("weights", weights)
    if len(weights) != num_prompts:
        raise ValueError(
            f"weights has {len(weights)} entries but the draws hold {num_prompts} prompts; expected one weight per "
            "prompt of the batch"
        )

    latency_cache: dict[int, float] = {}

    def cached_latency(num_running: int) -> float:
        # The same concurrencies recur across draws and grid points; the profile is a pure function of them.
        if num_running not in latency_cache:
            latency_cache[num_running] = per_token_latency(num_running)
        return latency_cache[num_running]

    def simulate(plans: list[GroupPlan]) -> tuple[float, float]:
        """Mean kept length and mean step time over the draws, for one plan per prompt."""
        engine_of = _assign_engines([plan.num_candidates for plan in plans], num_engines)
        kept_total, kept_count, time_total = 0, 0, 0.0
        for drawn in samples:
            engines: list[list[int]] = [[] for _ in range(num_engines)]
            for p, plan in enumerate(plans):
                group = drawn[p][: plan.num_candidates]
                lengths = [length for length, _ in group]
                truncated = [cut for _, cut in group]
                kept = _select(lengths, truncated, plan.num_keep, plan.num_long, truncated_rule)
                kept_total += sum(lengths[j] for j in kept)
                kept_count += len(kept)
                engines[engine_of[p]].extend(_effective_lengths(lengths, truncated, plan, truncated_rule))
            time_total += max(_rollout_time(engine_lengths, cached_latency) for engine_lengths in engines)
        return kept_total / kept_count, time_total / len(samples)

    base_kept, base_time = simulate([GroupPlan.uniform(num_keep)] * num_prompts)
    best = None  # (utility, budget, effectiveness, time_ratio, plans, step_time, kept_mean)
    grid = []
    for budget in _grid_budgets(num_prompts, min_candidates, max_candidates):
        plans = build_plans(weights, budget, num_keep, num_long, min_candidates, max_candidates, tail_prune, tie_keys)
        kept_mean, step_time = simulate(plans)
        # All-zero lengths make both baselines 0: nothing to shorten, and every budget then costs the same.
        effectiveness = (base_kept - kept_mean) / base_kept if base_kept > 0 else 0.0
        time_ratio = step_time / base_time if base_time > 0 else 1.0
        utility = effectiveness - cost_weight * time_ratio
        grid.append((budget / num_prompts, utility))
        if best is None or utility > best[0]:  # strict: ties keep the smaller, cheaper budget
            best = (utility, budget, effectiveness, time_ratio, plans, step_time, kept_mean)
    assert best is not None  # the grid always holds N * min_candidates
    utility, budget, effectiveness, time_ratio, plans, step_time, kept_mean = best
    return BudgetChoice(
        budget, budget / num_prompts, utility, effectiveness, time_ratio, grid=tuple(grid), plans=tuple(plans),
        rollout_time_s=step_time, kept_length_mean=kept_mean,
    )  # fmt: skip


def _assign_engines(num_candidates: Sequence[int], num_engines: int) -> list[int]:
    """Engine per prompt, in order, to the least-loaded engine (ties: lowest index); load grows by M'_i."""
    heap = [(0, engine) for engine in range(num_engines)]
    assignment = []
    for m in num_candidates:
        load, engine = heapq.heappop(heap)
        assignment.append(engine)
        heapq.heappush(heap, (load + m, engine))
    return assignment


def _check_bounds(min_candidates: int, max_candidates: int) -> None:
    check_int("min_candidates", min_candidates, minimum=1)
    check_int("max_candidates", max_candidates)
    if min_candidates > max_candidates:
        raise ValueError(
            f"min_candidates={min_candidates} exceeds max_candidates={max_candidates}; "
            "set min_candidates <= max_candidates (the paper uses n and 2n)"
        )


def _check_history(
    history: Sequence[Sequence[tuple[int, bool]]], name: str = "history"
) -> list[list[tuple[int, bool]]]:
    check_sequence(name, history)
    if len(history) == 0:
        raise ValueError(f"{name}=[] is empty; expected the candidate lengths of at least one recorded prompt")
    observations = []
    for i, prompt in enumerate(history):
        check_sequence(f"{name}[{i}]", prompt)
        if len(prompt) == 0:
            raise ValueError(f"{name}[{i}]=[] is empty; expected at least one (length, truncated) observation")
        checked = []
        for j, observation in enumerate(prompt):
            check_sequence(f"{name}[{i}][{j}]", observation)
            if len(observation) != 2:
                raise ValueError(
                    f"{name}[{i}][{j}]={observation!r} has {len(observation)} entries; expected (length, truncated)"
                )
            length = check_int(f"{name}[{i}][{j}] length", observation[0], minimum=0)
            cut = check_bool(f"{name}[{i}][{j}] truncated", observation[1])
            checked.append((length, cut))
        observations.append(checked)
    return observations


def _check_samples(samples: Replay, max_candidates: int) -> Replay:
    check_sequence("samples", samples)
    if len(samples) == 0:
        raise ValueError("samples=[] is empty; expected at least one draw of [num_prompts][max_candidates] candidates")
    num_prompts = None
    for d, drawn in enumerate(samples):
        check_sequence(f"samples[{d}]", drawn)
        if num_prompts is None:
            num_prompts = len(drawn)
            if num_prompts == 0:
                raise ValueError("samples[0]=[] holds no prompt; expected one candidate list per prompt")
        elif len(drawn) != num_prompts:
            raise ValueError(f"samples[{d}] holds {len(drawn)} prompts but samples[0] holds {num_prompts}")
        for p, group in enumerate(drawn):
            check_sequence(f"samples[{d}][{p}]", group)
            if len(group) != max_candidates:
                raise ValueError(
                    f"samples[{d}][{p}] holds {len(group)} candidates; expected max_candidates={max_candidates}"
                )
        _check_history(drawn, name=f"samples[{d}]")
    return samples


def _grid_budgets(num_prompts: int, min_candidates: int, max_candidates: int) -> list[int]:
    """Budgets N * min .. N * max in steps of 1 (M̄ in steps of 1/N), thinned evenly to at most 64, both ends kept."""
    low, high = num_prompts * min_candidates, num_prompts * max_candidates
    if high - low + 1 <= MAX_GRID_POINTS:
        return list(range(low, high + 1))
    span = high - low
    return sorted({low + round(k * span / (MAX_GRID_POINTS - 1)) for k in range(MAX_GRID_POINTS)})
