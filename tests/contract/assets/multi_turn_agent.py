"""A multi-turn `AgentExecutor` for `--train.agent_func_path`: upstream's `MultiTurnAgentExecutor` with an environment
that always asks for another turn, so every sample calls `generate` at least twice. DARTS must reject it at the second
call (its selection and early abort are defined on the length of one completion)."""

import torch
from openrlhf.utils.agent import AgentInstanceBase, MultiTurnAgentExecutor


class TwoTurnEnvironment(AgentInstanceBase):
    def __init__(self, *args, **kwargs):
        pass

    async def step(self, state_dict, **kwargs):
        zero = torch.tensor(0.0)
        return {"rewards": zero, "scores": zero, "environment_feedback": "\nAgain:", "done": False}


class AgentExecutor(MultiTurnAgentExecutor):
    def __init__(self):
        super().__init__(TwoTurnEnvironment)
