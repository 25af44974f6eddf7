"""The status reduction of upstream's `ppo_train`, for the CPU actors' `fit`.

Mirrors ppo_actor.py@0.11.2 `ActorPPOTrainer.ppo_train` and ppo_critic.py@0.11.2 `CriticPPOTrainer.ppo_train` (both
pinned in `upstream.BEHAVIOUR_PINNED`): upstream's `ppo_train` cannot run on CPU (it asks CUDA for a device), so the
CPU actors loop over the micro-batches themselves, call upstream's `training_step`, and reduce what it returns here.

Policy: each micro-step's metrics are weighted by its action tokens (weight "token") or samples ("sample"), summed
over the DP ranks and divided by the summed weight; metrics with weight None (`actor_lr`, `actor_grad_norm`) are kept
as they are. Over the steps of one `fit`: token- or sample-weighted means, except `actor_lr` and `actor_grad_norm`,
which take the last step's value. Critic: each step's status is averaged over the ranks, then over the steps.
"""

from __future__ import annotations

import torch

_PRIVATE = ("_num_samples", "_num_action_tokens", "_weights")


def policy_micro_step(status: dict, strategy) -> dict:
    """One micro-step of `ActorPPOTrainer.training_step`'s output, reduced over the DP ranks."""
    metrics, weights = status["metrics"], status["weights"]
    n_tokens, n_samples = status["num_action_tokens"], status["num_samples"]
    reduced = {"_num_action_tokens": n_tokens, "_num_samples": n_samples}
    last_metrics = {}
    for key, value in metrics.items():
        weight = weights[key]
        if weight is None:
            last_metrics[key] = value
            continue
        scale = n_tokens if weight == "token" else n_samples
        reduced[key] = value.float().mean().item() * scale if isinstance(value, torch.Tensor) else value * scale
    reduced = strategy.all_reduce(reduced)
    n_tokens = reduced.pop("_num_action_tokens")
    n_samples = reduced.pop("_num_samples")
    merged = {key: value / (n_tokens if weights[key] == "token" else n_samples) for key, value in reduced.items()}
    merged.update(last_metrics)
    merged["_num_samples"] = n_samples
    merged["_num_action_tokens"] = n_tokens
    merged["_weights"] = weights
    return merged


def policy_status(status_list: list[dict]) -> dict:
    """The status `ppo_train` returns from its micro-steps (`policy_micro_step` each)."""
    if not status_list:
        return {}
    total_tokens = sum(s["_num_action_tokens"] for s in status_list)
    total_samples = sum(s["_num_samples"] for s in status_list)
    status = {}
    for key in set().union(*(s.keys() for s in status_list)):
        if key in _PRIVATE:
            continue
        if key in ("actor_grad_norm", "actor_lr"):
            values = [s[key] for s in status_list if key in s]
            status[key] = values[-1] if values else 0.0
        elif status_list[0].get("_weights", {}).get(key) == "token":
            status[key] = sum(s.get(key, 0) * s["_num_action_tokens"] for s in status_list) / total_tokens
        else:
            status[key] = sum(s.get(key, 0) * s["_num_samples"] for s in status_list) / total_samples
    return status


def critic_status(status_list: list[dict]) -> dict:
    """The status `CriticPPOTrainer.ppo_train` returns: the mean over micro-steps of the rank-averaged statuses."""
    if not status_list:
        return {}
    status = dict(status_list[0])
    for step in status_list[1:]:
        for key, value in step.items():
            status[key] += value
    return {key: value / len(status_list) for key, value in status.items()}
