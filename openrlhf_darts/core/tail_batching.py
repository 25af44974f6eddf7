"""Tail batching, the inter-prompt baseline DARTS is compared with (DARTS_SPEC.md §1, §5; RollPacker, arXiv 2509.21009).

Each step launches ceil(r * B) prompts, trains on the first B whose groups complete and aborts the rest, whose prompts
are put back in front of the next step's fresh prompts (or dropped). This module is the pure part, standard library
only, so the rule is testable without an engine:

- ``launch_count(r, B)``: how many prompts a step launches;
- ``DeferredPrompt`` / ``DeferredQueue``: the aborted prompts waiting for a later step, FIFO, with a state-dict round
  trip (it rides in the trainer checkpoint);
- ``pinned_flags``: which launched prompts are pinned (with a cap, a prompt aborted ``max_deferrals`` times must be
  trained at its next launch; without one, a deferred prompt races again every step and is trained at the latest in
  its epoch's last steps, when nothing is aborted any more);
- ``TailRace``: one step's race, which decides, as groups complete, which are trained and which must be aborted now.

How the race decides. ``target`` groups are trained (B, or fewer on the last steps of an epoch). A pinned group is
trained whenever it completes; its slot is reserved while it runs. Any other group is trained if it completes while
``accepted + reserved < target``. Once ``accepted + reserved == target`` no unpinned group can be trained any more, so
every running unpinned group is aborted at that moment (``abort_now``), without waiting for the pinned ones. A group
that dynamic filtering rejects frees its slot (``complete(index, passed=False)``); the caller replaces it with one
fresh prompt (``launch``), as upstream replaces every filtered group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from openrlhf_darts.core._checks import check_bool, check_int, check_real, check_sequence

QUEUE_STATE_VERSION = 1


def launch_count(launch_ratio: float, batch_size: int) -> int:
    """ceil(r * B): prompts a step launches. Rounded to 9 decimals first, so 1.1 * 10 launches 11, not 12."""
    ratio = check_real("launch_ratio", launch_ratio, minimum=1.0)
    batch = check_int("batch_size", batch_size, minimum=1)
    return math.ceil(round(ratio * batch, 9))


@dataclass(frozen=True)
class DeferredPrompt:
    """A prompt as the dataloader gave it, plus how many times a step aborted it."""

    prompt: str
    label: Any  # the dataloader's label (a str for text datasets)
    image: Any  # the dataloader's image entry (None for text datasets)
    deferrals: int  # times this prompt was aborted and put back; 0 for a fresh prompt

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            raise TypeError(f"prompt={self.prompt!r} has type {type(self.prompt).__name__}; expected a str")
        check_int("deferrals", self.deferrals, minimum=0)


class DeferredQueue:
    """Aborted prompts in the order they were aborted; every step launches from its front before any fresh prompt."""

    def __init__(self) -> None:
        self._items: list[DeferredPrompt] = []

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[DeferredPrompt]:
        return list(self._items)

    def take(self, limit: int) -> list[DeferredPrompt]:
        """Remove and return the first ``limit`` prompts (fewer if the queue is shorter)."""
        check_int("limit", limit, minimum=0)
        taken, self._items = self._items[:limit], self._items[limit:]
        return taken

    def extend(self, prompts: Sequence[DeferredPrompt]) -> None:
        """Append aborted prompts behind those already waiting (older deferrals stay first)."""
        for j, item in enumerate(check_sequence("prompts", prompts)):
            if not isinstance(item, DeferredPrompt):
                raise TypeError(f"prompts[{j}]={item!r} has type {type(item).__name__}; expected a DeferredPrompt")
        self._items.extend(prompts)

    def state_dict(self) -> dict[str, Any]:
        return {"version": QUEUE_STATE_VERSION, "items": [asdict(item) for item in self._items]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the queue with a saved one; a state of another version or shape is refused whole."""
        if not isinstance(state, Mapping) or state.get("version") != QUEUE_STATE_VERSION or "items" not in state:
            raise ValueError(
                f"deferred-prompt queue state {state!r} is not a version-{QUEUE_STATE_VERSION} state "
                "({'version': 1, 'items': [...]}); resume from a checkpoint written with --tail_batching.enable, or "
                "drop client_states['tail_batching_queue'] to start with an empty queue"
            )
        items = []
        for j, item in enumerate(check_sequence("items", state["items"])):
            if not isinstance(item, Mapping) or set(item) != {"prompt", "label", "image", "deferrals"}:
                raise ValueError(f"items[{j}]={item!r} needs exactly the keys prompt, label, image, deferrals")
            items.append(DeferredPrompt(**item))
        self._items = items


def pinned_flags(deferrals: Sequence[int], target: int, max_deferrals: int | None) -> list[bool]:
    """Which launched prompts are pinned: those deferred ``max_deferrals`` times or more, the first ``target`` of them.

    ``max_deferrals=None`` pins nothing (no cap, or prompts that are dropped when aborted). Prompts beyond the first
    ``target`` eligible ones race unpinned this step (only with r > 2 can more than B wait at once).
    """
    target = check_int("target", target, minimum=0)
    flags = []
    for j, count in enumerate(check_sequence("deferrals", deferrals)):
        check_int(f"deferrals[{j}]", count, minimum=0)
        flags.append(max_deferrals is not None and count >= max_deferrals and sum(flags) < target)
    return flags


class GroupState(str, Enum):
    """Where one launched group stands in its step's race."""

    RUNNING = "running"
    ACCEPTED = "accepted"  # completed in time: trained this step
    FILTERED = "filtered"  # completed, rejected by dynamic filtering: consumed, never trained (upstream's rule)
    ABORTED = "aborted"  # could no longer be trained: aborted on its engine, its prompt deferred or dropped


class TailRace:
    """One step's race over the launched groups (module docstring)."""

    def __init__(self, target: int, pinned: Sequence[bool]) -> None:
        self.target = check_int("target", target, minimum=1)
        self.pinned: list[bool] = [
            check_bool(f"pinned[{j}]", p) for j, p in enumerate(check_sequence("pinned", pinned))
        ]
        if len(self.pinned) < self.target:
            raise ValueError(
                f"{len(self.pinned)} groups launched for target={self.target}; a race needs at least target groups"
            )
        if sum(self.pinned) > self.target:
            raise ValueError(f"{sum(self.pinned)} pinned groups exceed target={self.target}; pin at most target")
        self.states: list[GroupState] = [GroupState.RUNNING] * len(self.pinned)

    def launch(self) -> int:
        """Add one unpinned group (a replacement for a filtered one); returns its index."""
        self.pinned.append(False)
        self.states.append(GroupState.RUNNING)
        return len(self.states) - 1

    def count(self, state: GroupState) -> int:
        return sum(s is state for s in self.states)

    @property
    def reserved(self) -> int:
        """Slots held by pinned groups still running."""
        return sum(p and s is GroupState.RUNNING for p, s in zip(self.pinned, self.states))

    @property
    def running(self) -> list[int]:
        return [i for i, s in enumerate(self.states) if s is GroupState.RUNNING]

    @property
    def done(self) -> bool:
        return not self.running

    def complete(self, index: int, passed: bool) -> GroupState:
        """Group ``index`` completed; ``passed`` is False when dynamic filtering rejects it. Returns its new state."""
        check_int("index", index, minimum=0)
        check_bool("passed", passed)
        if index >= len(self.states) or self.states[index] is not GroupState.RUNNING:
            state = self.states[index].value if index < len(self.states) else "unknown"
            raise ValueError(f"group {index} completed but is {state}; only running groups can complete")
        if not passed:
            self.states[index] = GroupState.FILTERED
        elif self.pinned[index] or self.count(GroupState.ACCEPTED) + self.reserved < self.target:
            self.states[index] = GroupState.ACCEPTED
        else:  # unreachable through abort_now, which aborts such groups as soon as the slots are full
            self.states[index] = GroupState.ABORTED
        return self.states[index]

    def abort_now(self) -> list[int]:
        """Mark, and return, the running unpinned groups that can no longer be trained (the slots are all taken)."""
        if self.count(GroupState.ACCEPTED) + self.reserved < self.target:
            return []
        doomed = [i for i in self.running if not self.pinned[i]]
        for i in doomed:
            self.states[i] = GroupState.ABORTED
        return doomed
