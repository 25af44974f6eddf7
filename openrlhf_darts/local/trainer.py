"""`LocalPPOTrainer`: the DARTS trainer plus what a local comparison must see each step.

Why a subclass: a comparison needs, for every run alike, numbers upstream's status dict does not carry (the engine's
own iteration count, tokens generated, length percentiles of kept samples and of all candidates), a per-step record
the driver can read while the run is going, a held-out evaluation that reports what upstream's does not (greedy and
sampled accuracy, length percentiles, per-sample records), and proof that each weight sync reached the engine. It
extends `DartsPPOTrainer` (itself upstream's `PPOTrainer` one level deep) by short overrides that each call `super()`:

- `fit`: with an eval set (`--eval.dataset`), first evaluates the starting policy (step 0), then runs upstream's `fit`;
- `train_step`: reads the engines' iteration and finished-request counters (rollout/engine_counters.py) as it starts,
  which is right after upstream's rollout returned, so the step's rollout figures exclude the weight sync, its probe
  and evaluation (the counters are read again after each of those), and adds length percentiles and token counts of
  the kept samples (all runs) to the status, and what the update asks of length (`local/kept_length_push`,
  core/shaping.py);
- `broadcast_to_vllm` (probe on): the engine's log-probs of a fixed probe sequence before and after upstream's weight
  sync, and the policy actor's own log-probs of the same tokens: `local/sync_engine_change` (max |after - before|) must
  be > 0 once the policy moved, and `local/sync_engine_policy_diff` (max |engine - policy|) must be ~0;
- `save_logs_and_checkpoints`: adds `local/engine_unfinished_requests` (must be 0 between steps), the step's engine
  counts and candidate figures, lets DARTS merge its metrics and upstream log them, then appends the step's numeric
  status to the JSONL file named by `$OPENRLHF_DARTS_LOCAL_STEP_LOG`;
- `evaluate` (upstream calls it every `--eval.steps`): upstream's evaluation samples twice through upstream's own
  generator path (never redundancy or selection), the whole held-out set in one engine call each
  (`upstream.eval_samples_in_one_call`; upstream sends `--rollout.batch_size` prompts per call, one call after
  another): greedy (temperature 0, one sample per prompt) and at
  `--eval.temperature` with `--eval.n_samples_per_prompt`; returns upstream's `eval_*` metrics of the second pass (so
  upstream's best-checkpoint logic sees what it always sees) and appends every sample's pattern, length and reward,
  with the engines' counts during the evaluation, to the JSONL file named by `$OPENRLHF_DARTS_LOCAL_EVAL_LOG`.

All `local/*` keys are documented in docs/metrics.md. The local driver passes the switches through the Ray runtime
environment (`train.STEP_LOG_ENV`, `EVAL_LOG_ENV`, `train.SYNC_PROBE_ENV`).
"""

from __future__ import annotations

import json
import os
import sys
import time

import ray
import ray.cloudpickle
import torch

from openrlhf_darts import upstream
from openrlhf_darts.core.percentile import nearest_rank
from openrlhf_darts.core.shaping import step_length_push
from openrlhf_darts.trainer.ppo_trainer import DartsPPOTrainer

STEP_LOG_ENV = "OPENRLHF_DARTS_LOCAL_STEP_LOG"
EVAL_LOG_ENV = "OPENRLHF_DARTS_LOCAL_EVAL_LOG"
SYNC_PROBE_ENV = "OPENRLHF_DARTS_LOCAL_SYNC_PROBE"
PROBE_RESPONSE = "Start with 5 apples. 5 + 3 = 8.\nAnswer: 8"


def _length_figures(prefix: str, lengths: list[int]) -> dict[str, float]:
    """mean, nearest-rank p50 / p90 and max of a step's lengths, as `<prefix>_length_*`."""
    return {
        f"{prefix}_length_mean": sum(lengths) / len(lengths),
        f"{prefix}_length_p50": nearest_rank(lengths, 50),
        f"{prefix}_length_p90": nearest_rank(lengths, 90),
        f"{prefix}_length_max": float(max(lengths)),
    }


class LocalPPOTrainerImpl(DartsPPOTrainer.__ray_actor_class__):
    # ---- engine counters: the rollout's share --------------------------------------------------------------------
    def _engine_counts(self) -> list[tuple[int, int]]:
        """(iterations, finished requests) of each engine, cumulative."""
        iterations = [e.engine_iterations.remote() for e in self.vllm_engines]
        finished = [e.engine_finished_requests.remote() for e in self.vllm_engines]
        return list(zip(ray.get(iterations), ray.get(finished)))

    def _mark_engines(self) -> None:
        """Counters at the end of the last engine use that is not a training rollout (sync probe, evaluation)."""
        self._engine_mark = self._engine_counts()

    @staticmethod
    def _engine_delta(before, after) -> dict[str, float]:
        """The engines' work between two readings: the most iterations one engine ran (the rollout waits for the
        slowest engine; local mode has one) and the requests all engines finished."""
        return {
            "iterations": float(max(a[0] - b[0] for a, b in zip(after, before))),
            "finished_requests": float(sum(a[1] - b[1] for a, b in zip(after, before))),
        }

    def fit(self, global_step: int = 0) -> None:
        if self.eval_dataloader is not None and not self.args.ckpt.load_enable:
            # The starting policy, evaluated as upstream's fit evaluates after a step (same generate kwargs).
            eval_kwargs = dict(self.generate_kwargs, temperature=self.args.eval.temperature)
            eval_kwargs["n_samples_per_prompt"] = self.args.eval.n_samples_per_prompt
            self.evaluate(0, **eval_kwargs)
        self._mark_engines()
        return super().fit(global_step)

    def train_step(self, rollout_samples, global_step: int):
        # Upstream's fit calls this right after its rollout returned: the engines' work since the mark is the rollout.
        self._rollout_engine = self._engine_delta(self._engine_mark, self._engine_counts())
        lengths = [int(x) for e in rollout_samples for x in e.response_length]  # kept samples
        push = self._length_push(rollout_samples, lengths)
        status, next_step = super().train_step(rollout_samples, global_step)
        status.update(_length_figures("local/kept", lengths))
        status.update(push)
        status["local/kept_tokens"] = float(sum(lengths))
        status["local/response_length_max"] = status["local/kept_length_max"]
        status["local/response_tokens"] = status["local/kept_tokens"]
        return status, next_step

    def _length_push(self, rollout_samples, lengths: list[int]) -> dict[str, float]:
        """`local/kept_length_push` and its companions (core/shaping.py) from the kept samples' rewards, in the
        groups of n consecutive samples upstream's advantage code reshapes them into (checked: one prompt per group);
        {} with n = 1 (no group) or when the samples carry no reward yet (a reward model scores them later, in
        upstream's experience maker)."""
        n = self.args.rollout.n_samples_per_prompt
        if n < 2 or any(e.rewards is None for e in rollout_samples):
            return {}
        prompts = [p for e in rollout_samples for p in e.prompts]
        split = [i for i in range(0, len(prompts), n) if len(set(prompts[i : i + n])) != 1]
        if split:
            raise RuntimeError(
                f"kept samples {split[0]}..{split[0] + n - 1} of this step do not share a prompt; upstream's "
                "group_norm advantages assume n consecutive samples per prompt"
            )
        figures = step_length_push(lengths, [float(r) for e in rollout_samples for r in e.rewards], n)
        out = {"local/kept_length_push": figures["push"], "local/kept_mixed_groups": figures["mixed_share"]}
        if figures["push_mixed"] is not None:
            out["local/kept_length_push_mixed"] = figures["push_mixed"]
        if figures["corr"] is not None:
            out["local/kept_length_reward_corr"] = figures["corr"]
        return out

    def _candidate_figures(self, logs_dict: dict) -> dict[str, float]:
        """The step's candidates: how many, how many aborted, tokens generated (aborted ones up to their abort), and
        the lengths of those that stopped by themselves (an aborted candidate's partial length is only a lower bound
        on its length, so it is left out). From the DARTS groups' outcomes; with tail batching from every request of
        the step's launched groups, as the engine reported them (trained, filtered and aborted groups alike); with
        neither, the kept samples are all the candidates there were."""
        if self.tail_batching_config.enable:
            candidates = self.samples_generator.last_candidates
            finished = [length for length, cut in candidates if not cut]
            figures = _length_figures("local/finished", finished)
            figures["local/candidate_tokens"] = float(sum(length for length, _ in candidates))
            figures["local/candidates"] = float(len(candidates))
            figures["local/aborted_candidates"] = float(len(candidates) - len(finished))
            return figures
        if not self.darts_config.enable:
            figures = {k.replace("kept_length", "finished_length"): v for k, v in logs_dict.items()
                       if k.startswith("local/kept_length")}  # fmt: skip
            figures["local/candidate_tokens"] = logs_dict["local/kept_tokens"]
            return {**figures, "local/candidates": logs_dict["rollout/num_samples"], "local/aborted_candidates": 0.0}
        outcomes = self.samples_generator.last_outcomes
        finished = [length for o in outcomes for length, aborted in zip(o.lengths, o.aborted) if not aborted]
        figures = _length_figures("local/finished", finished)
        figures["local/candidate_tokens"] = float(sum(o.tokens_generated for o in outcomes))
        figures["local/candidates"] = float(sum(o.plan.num_candidates for o in outcomes))
        figures["local/aborted_candidates"] = float(sum(o.num_aborted for o in outcomes))
        return figures

    # ---- weight-sync probe ------------------------------------------------------------------------------------------
    def _probe_tokens(self) -> tuple[list[int], int]:
        """Token ids of the first training prompt plus a fixed answer, and how many of them are the answer."""
        if not hasattr(self, "_probe"):
            prompt = upstream.dataset_prompts(self.prompts_dataloader)[0]
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = self.tokenizer(PROBE_RESPONSE, add_special_tokens=False)["input_ids"]
            self._probe = (prompt_ids + answer_ids + [self.tokenizer.eos_token_id], len(answer_ids) + 1)
        return self._probe

    def _engine_logprobs(self, token_ids: list[int], num_actions: int) -> torch.Tensor:
        """The engine's log-prob of each of the last `num_actions` tokens given its prefix, (num_actions,)."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
        output = ray.get(self.vllm_engines[0].generate.remote(token_ids, params))
        positions = range(len(token_ids) - num_actions, len(token_ids))
        return torch.tensor([output.prompt_logprobs[t][token_ids[t]].logprob for t in positions])

    def _policy_logprobs(self, token_ids: list[int], num_actions: int) -> torch.Tensor:
        sequences = torch.tensor([token_ids])  # (1, T)
        action_mask = torch.ones((1, num_actions), dtype=torch.bool)  # (1, A)
        attention_mask = torch.ones_like(sequences)  # (1, T)
        refs = self.actor_model_group.async_run_method(
            "forward", sequences=sequences, action_mask=action_mask, attention_mask=attention_mask
        )
        return ray.get(refs)[0][0].float()  # (A,)

    def broadcast_to_vllm(self) -> None:
        if os.environ.get(SYNC_PROBE_ENV) != "1":
            return super().broadcast_to_vllm()
        token_ids, num_actions = self._probe_tokens()
        before = self._engine_logprobs(token_ids, num_actions)
        super().broadcast_to_vllm()
        after = self._engine_logprobs(token_ids, num_actions)
        policy = self._policy_logprobs(token_ids, num_actions)
        self._sync_metrics = {
            "local/sync_engine_change": float((after - before).abs().max()),
            "local/sync_engine_policy_diff": float((after - policy).abs().max()),
        }

    # ---- per-step record --------------------------------------------------------------------------------------------
    def save_logs_and_checkpoints(self, global_step: int, logs_dict=None, client_states=None) -> None:
        logs_dict = {} if logs_dict is None else logs_dict
        logs_dict.update(getattr(self, "_sync_metrics", {}))
        self._sync_metrics = {}
        unfinished = ray.get([engine.get_num_unfinished_requests.remote() for engine in self.vllm_engines])
        logs_dict["local/engine_unfinished_requests"] = float(sum(unfinished))
        logs_dict["local/engine_iterations"] = self._rollout_engine["iterations"]
        logs_dict["local/engine_finished_requests"] = self._rollout_engine["finished_requests"]
        logs_dict.update(self._candidate_figures(logs_dict))
        super().save_logs_and_checkpoints(global_step, logs_dict, client_states)  # DARTS merges darts/* in place
        path = os.environ.get(STEP_LOG_ENV)
        if path:
            row = {"step": global_step, **{k: v for k, v in logs_dict.items() if isinstance(v, (int, float))}}
            with open(path, "a") as log:
                log.write(json.dumps(row) + "\n")
        self._mark_engines()

    # ---- held-out evaluation ----------------------------------------------------------------------------------------
    def _eval_rows(self, samples) -> dict[str, list]:
        """Per sample, in arrival order: its prompt's position in the eval set, pattern (the row's `datasource`),
        response length, reward and truncation."""
        if not hasattr(self, "_eval_index"):
            self._eval_index = {}
            for datasources, prompts, _labels, _images in self.eval_dataloader:
                for prompt, datasource in zip(prompts, datasources):
                    self._eval_index.setdefault(prompt, (len(self._eval_index), datasource))
        rows = {"prompt": [], "pattern": [], "length": [], "reward": [], "truncated": []}
        for sample in samples:
            index, pattern = self._eval_index[sample.prompts[0]]
            rows["prompt"].append(index)
            rows["pattern"].append(pattern)
            rows["length"].append(int(sample.response_length.item()))
            rows["reward"].append(float(sample.rewards.item()))
            rows["truncated"].append(bool(sample.truncated.item()))
        return rows

    def evaluate(self, global_step, **generate_kwargs):
        start = time.perf_counter()
        before = self._engine_counts()
        # The whole held-out set in one engine call per temperature (upstream sends rollout.batch_size prompts per
        # call, one call after another): the same draws in distribution, a fraction of the engine iterations.
        greedy = upstream.eval_samples_in_one_call(
            self.samples_generator, **dict(generate_kwargs, temperature=0.0, n_samples_per_prompt=1)
        )
        middle = self._engine_counts()
        sampled = upstream.eval_samples_in_one_call(self.samples_generator, **generate_kwargs)
        after = self._engine_counts()
        # A group outcome here would mean evaluation went through DARTS' generate_group (redundancy, selection).
        outcomes = sum(len(r) for r in ray.get([e.pop_group_outcomes.remote() for e in self.vllm_engines]))
        n = generate_kwargs["n_samples_per_prompt"]
        logs = upstream.compute_eval_metrics(self.eval_dataloader, sampled, n)
        path = os.environ.get(EVAL_LOG_ENV)
        if path:
            record = {
                "step": global_step,
                "seconds": time.perf_counter() - start,
                "greedy": {
                    "temperature": 0.0,
                    "n": 1,
                    **self._engine_delta(before, middle),
                    **self._eval_rows(greedy),
                },
                "sampled": {
                    "temperature": generate_kwargs["temperature"],
                    "n": n,
                    **self._engine_delta(middle, after),
                    **self._eval_rows(sampled),
                },
                "group_outcomes": outcomes,
                "upstream": logs,
            }
            with open(path, "a") as log:
                log.write(json.dumps(record) + "\n")
        self._mark_engines()
        return logs


# Ship this class to the trainer's worker by value, like Ray ships `DartsPPOTrainer` itself. Shipped by reference, the
# worker ended up with two copies of `DartsPPOTrainer` and its zero-argument `super()` raised "obj must be an instance
# or subtype of type" (Ray 2.55); by value, the whole chain is one copy.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
LocalPPOTrainer = ray.remote(LocalPPOTrainerImpl)
