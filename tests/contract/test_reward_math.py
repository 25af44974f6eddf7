"""examples/scripts/reward_math.py (math-verify) called the way OpenRLHF calls it: loaded by upstream's real
`SingleTurnAgentExecutor` from the file, `reward_func` called once per sample from worker threads
(`upstream.score_like_engine`). No Ray or engine: the executor's reward path needs neither.

The cases are ones math-verify settles and an answer-string regex does not (equal values written differently, nested
braces, units and text around the answer), malformed answers (the wrong-answer reward, never an exception), and an
answer whose check runs for minutes without a time bound (killed after REWARD_MATH_TIMEOUT_S, counted in extra_logs).
"""

import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.contract, pytest.mark.timeout(300)]

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "scripts" / "reward_math.py"
# DAPO-Math-17k's instruction: the prompt itself contains "Answer: $Answer", which must never count as the answer.
PROMPT = "Solve the problem. The last line of your response should be of the form Answer: $Answer\n\nProblem: ...\n"
HANGS = "\\boxed{9^{9^{9^{9}}}}"  # math-verify's verify of this against 5 runs for minutes without a time bound


@pytest.fixture(scope="module")
def upstream():
    from openrlhf_darts import upstream

    return upstream


def _executor(upstream, monkeypatch, **env):
    # The file reads its environment when upstream's executor loads it.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return upstream.reward_file_executor(str(SCRIPT))


def _score(upstream, executor, cases):
    """(rewards, extra_logs) for [(response, label), ...], scored as an engine actor scores them."""
    results = upstream.score_like_engine(
        executor, [PROMPT + r for r, _ in cases], [PROMPT] * len(cases), [label for _, label in cases]
    )
    return [r["rewards"] for r in results], [r["extra_logs"] for r in results]


@pytest.fixture(scope="module")
def executor(upstream):
    executor = upstream.reward_file_executor(str(SCRIPT))
    yield executor
    executor.reward_func.__globals__["close_helpers"]()


def test_the_executor_calls_reward_func_from_a_worker_thread(upstream, tmp_path):
    # Precondition for everything below: upstream's path is threaded, so math-verify with its default (signal.alarm)
    # timeouts cannot run there; math-verify 0.9.0 raises ValueError (upstream's engine would log it and set
    # reward=None). A reward file written the naive way fails through the same call.
    naive = tmp_path / "naive_reward.py"
    naive.write_text(
        "from math_verify import parse, verify\n"
        "def reward_func(queries, prompts, labels):\n"
        "    ok = verify(parse('$' + labels[0] + '$'), parse(queries[0]))\n"
        "    return {'rewards': float(ok), 'scores': float(ok), 'extra_logs': {}}\n"
    )
    with pytest.raises(ValueError, match="threaded environment"):
        upstream.score_like_engine(upstream.reward_file_executor(str(naive)), ["\\boxed{2}"], [""], ["2"])


def test_answers_math_verify_settles(upstream, executor):
    cases = [
        # value, written differently: a string comparison says no
        ("Half of it: $x = 0.5$.\nAnswer: \\boxed{0.5}", "\\frac{1}{2}"),
        ("so the ratio is \\boxed{\\frac{1}{2}}", "0.5"),
        ("Answer: 2.0", "2"),
        ("Answer: \\boxed{\\frac{2}{4}}", "\\frac{1}{2}"),
        # nested braces, and \dfrac for \frac
        ("Thus $\\sin 60^\\circ = \\boxed{\\dfrac{\\sqrt{3}}{2}}$.", "\\frac{\\sqrt{3}}{2}"),
        ("Answer: $\\boxed{\\frac{\\sqrt{2}}{2}}$", "\\frac{\\sqrt{3}}{2}"),  # nested and wrong
        # units and text around the answer
        ("The side is \\boxed{12 \\text{ cm}}.", "12"),
        ("Answer: 12 cm", "12"),
        ("Answer: $1,200$ dollars.", "1200"),
        ("First 3 + 4 = 7, then double it.\nAnswer: 14", "7"),  # a number in the working is not the answer
    ]
    rewards, logs = _score(upstream, executor, cases)
    assert rewards == [1.0, 1.0, 1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0]
    assert [log["accuracy"] for log in logs] == [1.0 if r == 1.0 else 0.0 for r in rewards]
    assert all(log["verify_timeout"] == 0.0 for log in logs)


def test_malformed_answers_get_the_wrong_answer_reward(upstream, executor):
    cases = [
        ("Answer: \\boxed{\\frac{1}{", "12"),  # unbalanced braces
        ("}}}{{{$$\\frac", "12"),
        ("\\boxed{}", "12"),
        ("", "12"),
        ("I could not solve it.", "12"),  # the prompt's "Answer: $Answer" must not be read as an answer
    ]
    rewards, logs = _score(upstream, executor, cases)
    assert rewards == [-1.0] * len(cases)
    assert [log["answered"] for log in logs][1:] == [0.0, 0.0, 0.0, 0.0]


def test_a_label_math_verify_cannot_read_fails_loudly(upstream, executor):
    with pytest.raises(ValueError, match="parses no answer from the label"):
        _score(upstream, executor, [("Answer: 3", "")])


def test_only_one_sample_per_call(executor):
    with pytest.raises(ValueError, match="exactly one per call"):
        executor.reward_func(["a", "b"], ["", ""], ["1", "1"])


def test_a_check_that_does_not_end_is_cut_at_the_timeout(upstream, monkeypatch):
    # One helper: the three samples run one after another on it, so the two after the cut run on its replacement.
    executor = _executor(upstream, monkeypatch, REWARD_MATH_TIMEOUT_S="2", REWARD_MATH_WORKERS="1")
    try:
        start = time.monotonic()
        rewards, logs = _score(upstream, executor, [(HANGS, "5"), ("Answer: 5", "5"), ("\\boxed{0.5}", "\\frac12")])
        elapsed = time.monotonic() - start
    finally:
        executor.reward_func.__globals__["close_helpers"]()
    assert rewards == [-1.0, 1.0, 1.0]
    assert [log["verify_timeout"] for log in logs] == [1.0, 0.0, 0.0]
    # 2 s cut plus helper start-ups (sympy imports: seconds on a loaded machine); unbounded, the check runs minutes.
    assert 2.0 <= logs[0]["verify_seconds"] < 120 and elapsed < 180
