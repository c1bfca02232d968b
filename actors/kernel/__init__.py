"""The actor kernel: asyncio-native actors, refs that outlive restarts, bounded mailboxes,
OTP-style supervisors, introspection, and a bridge to pykka for blocking work.

See docs/architecture.md for the semantics and how they map to OTP.
"""

from actors.kernel.actor import Actor, ActorContext, SyncActor
from actors.kernel.cell import ActorCell, ChildExited
from actors.kernel.deferred import ask_settled, settle_reply
from actors.kernel.errors import (
    ActorDead,
    ActorError,
    ActorStartError,
    AskTimeout,
    MailboxFull,
    SupervisorGaveUp,
    UnhandledMessage,
)
from actors.kernel.mailbox import Overflow
from actors.kernel.message import Ask
from actors.kernel.pykka_bridge import BridgedThreadingActor, PykkaHost, ask_bridged, await_pykka
from actors.kernel.ref import ActorRef
from actors.kernel.snapshot import ActorSnapshot, ActorState, FailureInfo
from actors.kernel.spec import Backoff, ChildSpec, MailboxConfig, Restart, Strategy
from actors.kernel.supervisor import (
    RestartChild,
    StartChild,
    Supervisor,
    TerminateChild,
    WhichChildren,
)
from actors.kernel.system import ActorSystem

__all__ = [
    "Actor",
    "ActorCell",
    "ActorContext",
    "ActorDead",
    "ActorError",
    "ActorRef",
    "ActorSnapshot",
    "ActorStartError",
    "ActorState",
    "ActorSystem",
    "Ask",
    "AskTimeout",
    "Backoff",
    "BridgedThreadingActor",
    "ChildExited",
    "ChildSpec",
    "FailureInfo",
    "MailboxConfig",
    "MailboxFull",
    "Overflow",
    "PykkaHost",
    "Restart",
    "RestartChild",
    "StartChild",
    "Strategy",
    "Supervisor",
    "SupervisorGaveUp",
    "SyncActor",
    "TerminateChild",
    "UnhandledMessage",
    "WhichChildren",
    "ask_bridged",
    "ask_settled",
    "await_pykka",
    "settle_reply",
]
