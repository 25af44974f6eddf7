"""The engine's own iteration count (rollout/engine_counters.py) on the real vLLM CPU engine, against oracles.

Every request here has an exact length: `min_tokens = max_tokens = k` masks EOS and the stop tokens until k tokens
exist and stops at k. Each test takes differences of the cumulative counters around its own requests, on the session's
engine with nothing else running.
"""

import pytest

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPT = "the cat runs over the big dog"


def _exact(k: int):
    from vllm import SamplingParams

    return SamplingParams(temperature=1.0, min_tokens=k, max_tokens=k)


def _counters(ray_cluster, engine) -> tuple[int, int]:
    return tuple(ray_cluster.get([engine.engine_iterations.remote(), engine.engine_finished_requests.remote()]))


def _responses(ray_cluster, engine, tokenizer, k: int, num: int = 1):
    return engine.generate_responses.remote(PROMPT, "", _exact(k), 512, tokenizer, num_samples=num)


def _length(response) -> int:
    start, end = response["action_ranges"][0]
    return end - start


def test_one_request_of_k_tokens_takes_k_iterations(ray_cluster, darts_engine, tokenizer):
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0  # idle engine
    before = _counters(ray_cluster, darts_engine)
    (response,) = ray_cluster.get(_responses(ray_cluster, darts_engine, tokenizer, 17))
    after = _counters(ray_cluster, darts_engine)
    assert _length(response) == 17
    # Iteration 1 prefills the prompt and samples token 1; iterations 2..17 sample one token each. The step that
    # only frees the finished request samples nothing and is not counted.
    assert after[0] - before[0] == 17
    assert after[1] - before[1] == 1


def test_two_requests_together_take_the_longer_ones_iterations(ray_cluster, darts_engine, tokenizer):
    import time

    before = _counters(ray_cluster, darts_engine)
    # The longer request first, and long enough that the shorter one certainly joins while it runs and ends first:
    # the pair takes exactly the longer request's 480 iterations (one after the other it would be 480 + 6 = 486).
    # The shorter one is sent once the engine holds the longer one: two separate Ray calls can otherwise reach the
    # engine any distance apart on a loaded machine (a 40-token pair once took 46 iterations in CI).
    long_ref = _responses(ray_cluster, darts_engine, tokenizer, 480)
    deadline = time.monotonic() + 120
    while ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0:
        assert time.monotonic() < deadline, "the 480-token request never reached the engine"
        time.sleep(0.005)
    short_ref = _responses(ray_cluster, darts_engine, tokenizer, 6)
    lengths = [_length(r) for group in ray_cluster.get([long_ref, short_ref]) for r in group]
    after = _counters(ray_cluster, darts_engine)
    assert lengths == [480, 6]
    assert after[0] - before[0] == 480
    assert after[1] - before[1] == 2


def test_more_requests_than_slots_take_more_iterations_than_the_longest(ray_cluster, darts_engine, tokenizer):
    from openrlhf_darts.bench.rollout_engine import engine_limits

    limits = engine_limits(darts_engine)
    slots, k = limits["max_num_seqs"], 24
    num = slots + 8
    before = _counters(ray_cluster, darts_engine)
    responses = ray_cluster.get(_responses(ray_cluster, darts_engine, tokenizer, k, num))
    after = _counters(ray_cluster, darts_engine)
    assert [_length(r) for r in responses] == [k] * num
    iterations = after[0] - before[0]
    # At most `slots` requests run at once, so request slots+1 starts only after some request finished its k tokens
    # (iteration k at the earliest) and needs k iterations of its own: at least 2k in all, although the longest
    # request has k tokens. The 8 late requests take the slots of the 8 earliest finishers, so the total stays 2k
    # unless the first wave's admission straggles by more than a step or two (its prompts fit one step's token budget;
    # the requests reach the engine core within a few milliseconds, k = 24 iterations give them ample time).
    assert 2 * k <= iterations <= 2 * k + 3, (iterations, slots, limits["max_num_batched_tokens"])
    assert after[1] - before[1] == num
