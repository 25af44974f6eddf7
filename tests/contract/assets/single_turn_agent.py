"""A user's single-turn `AgentExecutor` for `--train.agent_func_path`, written the way a DARTS user would write one.

One `generate` call per sample; the executor scores the sample itself: reward 1.0 for an even number of response
tokens, else 0.0 (deterministic, and it varies inside a group, so group-relative advantages are non-zero). Every
sample logs `agent_calls` = 1.0, which upstream carries into the step's status: proof that this executor ran.
"""

from copy import deepcopy

from openrlhf.utils.agent import AgentExecutorBase


class AgentExecutor(AgentExecutorBase):
    async def execute(self, prompt, label, sampling_params, max_length, hf_tokenizer, llm_engine, images=None):
        prompt_ids = hf_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        params = deepcopy(sampling_params)
        if params.max_tokens is None:  # upstream's default: prompt and response share max_length
            params.max_tokens = max(1, max_length - len(prompt_ids))
        completion = (await llm_engine.generate(prompt_ids, params)).outputs[0]
        response_ids = list(completion.token_ids)
        reward = float(len(response_ids) % 2 == 0)
        return {
            "prompt": prompt,
            "label": label,
            "images": images,
            "mm_train_inputs": None,
            "observation_tokens": prompt_ids + response_ids,
            "action_ranges": [(len(prompt_ids), len(prompt_ids) + len(response_ids))],
            "rollout_log_probs": None,
            "truncated": completion.finish_reason == "length",
            "reward": reward,
            "scores": reward,
            "extra_logs": {"agent_calls": 1.0},
        }
