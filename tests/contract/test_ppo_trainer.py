"""`DartsPPOTrainer`: its place under upstream's `PPOTrainer`, and its two overrides on real collaborators.

Upstream's constructor needs a DeepSpeed strategy and CUDA model actors, so the override tests build the trainer
without it (`object.__new__` of the unwrapped class, then the attributes upstream's `BasePPOTrainer.__init__` sets
and the methods read; STYLE.md allows such method-level tests). Everything they touch is real: a
`DartsSamplesGenerator` that has generated on the shared vLLM CPU engine, upstream's `save_logs_and_checkpoints`,
`init_checkpoint_states` and `restore_best_checkpoint_state`, upstream's `RayActorGroup` and `TensorboardLogger`.
The only stand-in is the checkpoint owner: a Ray actor with the two checkpoint methods of upstream's
`PolicyModelActor` that pickles `client_states` to disk with `torch.save`, as DeepSpeed's checkpoint does, instead of
holding a model.
"""

import inspect
import json
import logging
import os
from types import SimpleNamespace

import pytest
from conftest import prompt_batches, rollout_args

from openrlhf_darts.config import DartsConfig
from openrlhf_darts.tail_batching import TailBatchingConfig

pytestmark = [pytest.mark.contract, pytest.mark.timeout(600)]

PROMPTS = [f"the big dog sees {i} small birds" for i in range(4)]
OVERRIDDEN = ("__init__", "save_logs_and_checkpoints", "restore_best_checkpoint_state")
GENERATE_KWARGS = dict(temperature=1.0, top_p=1.0, max_new_tokens=40, max_len=512)


@pytest.fixture(scope="module")
def trainer_classes():
    from openrlhf_darts.trainer.ppo_trainer import DartsPPOTrainer  # first: installs the flash_attn fallback

    from openrlhf.trainer import ppo_trainer  # isort: skip

    return DartsPPOTrainer, ppo_trainer.PPOTrainer


def _parameters(function) -> list[tuple]:
    # Ray adds a keyword-only `_ray_trace_ctx` to every actor method, upstream's and ours alike.
    return [
        (p.name, p.kind, p.default)
        for p in inspect.signature(function).parameters.values()
        if p.name != "_ray_trace_ctx"
    ]


def test_darts_trainer_is_a_ray_actor_one_level_below_upstream(trainer_classes):
    import ray

    darts, upstream_trainer = trainer_classes
    assert isinstance(darts, ray.actor.ActorClass)
    assert darts.__ray_actor_class__.__bases__ == (upstream_trainer.__ray_actor_class__,)


def test_overrides_exist_upstream_with_the_same_signatures(trainer_classes):
    darts, upstream_trainer = trainer_classes
    impl, base = darts.__ray_actor_class__, upstream_trainer.__ray_actor_class__
    # No other upstream method is shadowed (STYLE.md rule 4: override as few methods as possible).
    assert sorted(k for k, v in vars(impl).items() if inspect.isfunction(v)) == sorted(OVERRIDDEN)
    for name in OVERRIDDEN:
        assert _parameters(getattr(impl, name)) == _parameters(getattr(base, name)), name


# ---- the checkpoint pair and the metric merge, on real collaborators ------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_owner(ray_cluster, tmp_path_factory):
    """Upstream's RayActorGroup of one actor that saves/loads client_states like the policy actor's checkpoint."""
    from openrlhf_darts import upstream  # noqa: F401  (flash_attn fallback before openrlhf.models loads)

    from openrlhf.trainer.ray.launcher import BaseModelActor, RayActorGroup  # isort: skip

    ckpt_path = str(tmp_path_factory.mktemp("ckpt"))

    class CheckpointOwner(BaseModelActor):
        def save_checkpoint(self, tag, client_states=None, metric_value=None, metric_key=None):
            import torch

            os.makedirs(os.path.join(ckpt_path, "_actor"), exist_ok=True)
            torch.save(client_states, os.path.join(ckpt_path, "_actor", f"{tag}.pt"))
            self.latest = tag

        def get_checkpoint_states(self):
            import torch

            return torch.load(os.path.join(ckpt_path, "_actor", f"{self.latest}.pt"), weights_only=False)

    group = RayActorGroup(1, 1, ray_cluster.remote(CheckpointOwner), pg=None, num_gpus_per_actor=0)
    return group, ckpt_path


def _args(ckpt_path: str, tensorboard_dir: str, enable: bool = True):
    args = rollout_args(n=4, batch_size=4, darts={"enable": enable})
    args.logger = SimpleNamespace(
        logging_steps=1, tensorboard_dir=tensorboard_dir, wandb=SimpleNamespace(run_name="run")
    )
    args.ckpt = SimpleNamespace(save_steps=1, path=ckpt_path, load_enable=True)
    return args


def _bare_trainer(trainer_classes, args, samples_generator, actor_group, tensorboard_logger=None):
    """The trainer without upstream's heavy constructor: the attributes BasePPOTrainer.__init__ sets that our two
    overrides and upstream's save/restore/init_checkpoint_states read."""
    trainer = object.__new__(trainer_classes[0].__ray_actor_class__)
    trainer.strategy = SimpleNamespace(args=args)
    trainer.args = args
    trainer.darts_config = DartsConfig.from_args(args)
    trainer.tail_batching_config = TailBatchingConfig.from_args(args)
    trainer.samples_generator = samples_generator
    trainer.actor_model_group = actor_group
    trainer.critic_model_group = None
    trainer.wandb_logger = None
    trainer.tensorboard_logger = tensorboard_logger
    trainer.best_eval_metric_key = ""
    trainer.best_eval_metric_value = float("-inf")
    trainer._latest_eval_metric_value = None
    return trainer


def _generator(args, engines, tokenizer):
    from openrlhf_darts.trainer.samples_generator import DartsSamplesGenerator

    strategy = SimpleNamespace(args=args)
    return DartsSamplesGenerator(
        strategy, prompt_batches(PROMPTS, 4), None, tokenizer, engines, DartsConfig.from_args(args)
    )


def test_metrics_reach_the_logged_status_and_planner_state_survives_a_checkpoint(
    trainer_classes, checkpoint_owner, ray_cluster, darts_engine, tokenizer, tmp_path
):
    from openrlhf.utils.logging_utils import TensorboardLogger

    from openrlhf_darts.bench.compare_runs import load_run

    group, ckpt_path = checkpoint_owner
    args = _args(ckpt_path, str(tmp_path / "tb"))
    generator = _generator(args, [darts_engine], tokenizer)
    samples, _, consumed, _ = generator.generate_samples(**GENERATE_KWARGS)
    assert consumed == 4 and len(samples) == 16  # 4 prompts x n = 4
    trainer = _bare_trainer(trainer_classes, args, generator, group, TensorboardLogger(args))

    # The status as upstream's fit hands it over: timing/step_total already summed from upstream's phases.
    status = {"timing/generation": 2.0, "timing/make_experience": 0.5, "timing/step_total": 2.5}
    client_states = {"episode": 0, "global_step": 1, "total_consumed_prompts": 4, "data_loader_state_dict": {}}
    assert generator.completed_steps == 0
    trainer.save_logs_and_checkpoints(1, status, client_states)
    trainer.tensorboard_logger.close()
    assert generator.completed_steps == 1  # upstream's global_step reaches the generator (--darts.warmup_steps)

    # darts/* and timing/darts_* merged in place; fixed budget: avg 1.25 n = 5 per prompt x 4 prompts = 20.
    assert status["darts/budget"] == 20 and status["darts/candidates_mean"] == 5.0
    assert status["timing/darts_allocation"] >= 0.0
    assert status["darts/tokens_generated"] >= status["darts/tokens_kept"] > 0
    # Step total stays the sum of upstream's phases (2.0 + 0.5): DARTS phases run inside them.
    assert status["timing/step_total"] == 2.5
    assert generator.pop_metrics() == {}  # popped, so the next step cannot log stale values

    # The planner state rides in client_states (same dict object, as fit passes it on to save_best_checkpoint).
    state = client_states["darts_planner"]
    assert state == generator.planner.state_dict()
    assert len(generator.planner.stats) == 4  # one smoothed spread per prompt
    # JSON-able: a planner loaded from its JSON text has the same state.
    from openrlhf_darts.trainer.planner import GroupPlanner

    from_json = GroupPlanner(generator.config)
    from_json.load_state_dict(json.loads(json.dumps(state)))
    assert from_json.state_dict() == state

    # Upstream's TensorboardLogger wrote them under train/...; the comparison tool reads them back.
    run = load_run(tmp_path / "tb" / "run")
    assert run["darts/budget"] == {1: 20.0}
    assert run["timing/step_total"] == {1: 2.5}

    # A fresh trainer resumes the way fit does: upstream's init_checkpoint_states, then restore_best_checkpoint_state.
    fresh = _bare_trainer(trainer_classes, args, _generator(args, [darts_engine], tokenizer), group)
    assert len(fresh.samples_generator.planner.stats) == 0
    uniform = fresh.samples_generator.planner.plan(PROMPTS)
    assert [p.num_candidates for p in uniform] == [5, 5, 5, 5]  # no history: equal weights, 20 / 4 each
    states = fresh.init_checkpoint_states()
    assert states["global_step"] == 1
    fresh.restore_best_checkpoint_state(states)
    assert fresh.samples_generator.completed_steps == 1  # a resumed run continues its warm-up where it stopped
    assert fresh.samples_generator.planner.state_dict() == generator.planner.state_dict()
    assert fresh.samples_generator.planner.plan(PROMPTS) == generator.planner.plan(PROMPTS)
    assert fresh.best_eval_metric_value == float("-inf")  # upstream's part of the restore still ran


def test_resuming_a_checkpoint_without_darts_state_warns(
    trainer_classes, checkpoint_owner, darts_engine, tokenizer, tmp_path, caplog
):
    group, ckpt_path = checkpoint_owner
    args = _args(ckpt_path, str(tmp_path / "tb"))
    trainer = _bare_trainer(trainer_classes, args, _generator(args, [darts_engine], tokenizer), group)
    with caplog.at_level(logging.WARNING, logger="openrlhf_darts.trainer.ppo_trainer"):
        trainer.restore_best_checkpoint_state({"global_step": 7, "best_eval_metric_key": "eval_pass1"})
    assert "global_step=7 has no 'darts_planner' state" in caplog.text
    assert trainer.best_eval_metric_key == "eval_pass1"
    assert len(trainer.samples_generator.planner.stats) == 0


def test_resuming_a_checkpoint_on_the_old_length_scale_is_refused(
    trainer_classes, checkpoint_owner, darts_engine, tokenizer, tmp_path
):
    # Planner state written before issue 11: no version, v_i on the raw-std scale, history flags meaning "censored".
    group, ckpt_path = checkpoint_owner
    args = _args(ckpt_path, str(tmp_path / "tb"))
    trainer = _bare_trainer(trainer_classes, args, _generator(args, [darts_engine], tokenizer), group)
    old = {"stats": {"alpha": 0.3, "values": {"k": 12.5}, "counts": {"k": 2}}, "history": [[[[40, True], [7, False]]]]}
    with pytest.raises(ValueError, match=r"written before versions were recorded \(version 1\)"):
        trainer.restore_best_checkpoint_state({"global_step": 3, "darts_planner": old})
    assert len(trainer.samples_generator.planner.stats) == 0  # nothing of the old scale got in


def test_darts_off_adds_nothing(trainer_classes, checkpoint_owner, tmp_path):
    from openrlhf_darts import upstream

    group, ckpt_path = checkpoint_owner
    args = _args(ckpt_path, str(tmp_path / "tb"), enable=False)
    generator = upstream.SamplesGenerator(SimpleNamespace(args=args), None, None, None, [])
    trainer = _bare_trainer(trainer_classes, args, generator, group)
    status = {"timing/step_total": 1.0}
    client_states = {"global_step": 2}
    trainer.save_logs_and_checkpoints(2, status, client_states)
    assert status == {"timing/step_total": 1.0}
    assert "darts_planner" not in client_states
    trainer.restore_best_checkpoint_state({"global_step": 2})  # no planner to restore, no warning needed


# ---- tail batching (the comparison arm): metrics and the deferred-prompt queue through the same two overrides -------

TAIL_PROMPTS = [f"a green frog jumps {i} times" for i in range(16)]


def _tail_generator(args, engines, tokenizer):
    from openrlhf_darts.trainer.tail_batching import TailBatchingSamplesGenerator

    config = TailBatchingConfig.from_args(args)
    return TailBatchingSamplesGenerator(
        SimpleNamespace(args=args), prompt_batches(TAIL_PROMPTS, 1), None, tokenizer, engines, config
    )


def test_tail_batching_queue_survives_a_checkpoint_and_comes_back_first(
    trainer_classes, checkpoint_owner, ray_cluster, darts_engine, tokenizer, tmp_path
):
    group, ckpt_path = checkpoint_owner
    args = _args(ckpt_path, str(tmp_path / "tb"), enable=False)
    args.tail_batching = SimpleNamespace(enable=True, launch_ratio=2.0, max_deferrals=1)
    generator = _tail_generator(args, [darts_engine], tokenizer)
    samples, _, consumed, _ = generator.generate_samples(**GENERATE_KWARGS)
    assert consumed == 8 and len(samples) == 16  # B = 4 of the 8 launched, n = 4
    waiting = generator.queue.state_dict()
    assert len(waiting["items"]) == 4  # precondition: something to carry over
    trainer = _bare_trainer(trainer_classes, args, generator, group)

    status = {"timing/step_total": 1.0}
    client_states = {"episode": 0, "global_step": 1, "total_consumed_prompts": 8, "data_loader_state_dict": {}}
    trainer.save_logs_and_checkpoints(1, status, client_states)
    assert status["tail_batching/prompts_deferred"] == 4 and status["tail_batching/queue_size"] == 4
    assert "darts/budget" not in status and "darts_planner" not in client_states  # DARTS is off
    assert client_states["tail_batching_queue"] == waiting
    assert generator.pop_metrics() == {}

    # A fresh trainer resumes as fit does; its queue is the saved one, and its first step trains those prompts first
    # (deferred once = max_deferrals: pinned), before any prompt of its dataloader.
    fresh = _bare_trainer(trainer_classes, args, _tail_generator(args, [darts_engine], tokenizer), group)
    fresh.restore_best_checkpoint_state(fresh.init_checkpoint_states())
    assert fresh.samples_generator.queue.state_dict() == waiting
    samples, _, consumed, _ = fresh.samples_generator.generate_samples(**GENERATE_KWARGS)
    trained = {s.prompts[0] for s in samples}
    assert trained == {item["prompt"] for item in waiting["items"]} and consumed == 4
    assert ray_cluster.get(darts_engine.get_num_unfinished_requests.remote()) == 0


def test_resuming_a_tail_queue_without_tail_batching_warns(trainer_classes, checkpoint_owner, tmp_path, caplog):
    from openrlhf_darts import upstream

    group, ckpt_path = checkpoint_owner
    args = _args(ckpt_path, str(tmp_path / "tb"), enable=False)
    generator = upstream.SamplesGenerator(SimpleNamespace(args=args), None, None, None, [])
    trainer = _bare_trainer(trainer_classes, args, generator, group)
    queue = {"version": 1, "items": [{"prompt": "p", "label": "", "image": None, "deferrals": 1}]}
    with caplog.at_level(logging.WARNING, logger="openrlhf_darts.trainer.ppo_trainer"):
        trainer.restore_best_checkpoint_state({"global_step": 3, "tail_batching_queue": queue})
    assert "holds 1 deferred tail-batching prompts but --tail_batching.enable is off" in caplog.text
