"""Introspection: what every actor reports about itself, nested into the supervision tree."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class ActorState(StrEnum):
    NEW = "new"  # created, never started
    STARTING = "starting"  # on_start running
    RUNNING = "running"
    STOPPING = "stopping"  # finishing its current message, then on_stop
    RESTARTING = "restarting"  # between instances: messages queue, nothing is lost
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FailureInfo:
    type: str
    message: str
    at: float  # wall-clock seconds since the epoch

    @classmethod
    def of(cls, error: BaseException) -> FailureInfo:
        return cls(type=type(error).__name__, message=str(error), at=time.time())

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "at": self.at}


@dataclass(frozen=True, slots=True)
class ActorSnapshot:
    name: str
    path: str
    actor_class: str
    state: ActorState
    mailbox_depth: int
    mailbox_capacity: int
    messages_handled: int
    restarts: int
    last_failure: FailureInfo | None
    uptime_s: float
    details: dict[str, Any] = field(default_factory=dict)
    children: tuple[ActorSnapshot, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; the shape `/admin/actors` serves."""
        return {
            "name": self.name,
            "path": self.path,
            "class": self.actor_class,
            "state": self.state.value,
            "mailbox": {"depth": self.mailbox_depth, "capacity": self.mailbox_capacity},
            "messages_handled": self.messages_handled,
            "restarts": self.restarts,
            "last_failure": None if self.last_failure is None else self.last_failure.to_dict(),
            "uptime_s": round(self.uptime_s, 3),
            "details": self.details,
            "children": [child.to_dict() for child in self.children],
        }

    def find(self, path: str) -> ActorSnapshot | None:
        if self.path == path:
            return self
        for child in self.children:
            found = child.find(path)
            if found is not None:
                return found
        return None
