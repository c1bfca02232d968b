"""The kernel's exception tree.

ActorError
├── ActorDead           the actor stopped for good (or was removed); pending asks fail with it
├── MailboxFull         a bounded mailbox with overflow="fail" had no room
├── AskTimeout          no reply within the ask's timeout (also a TimeoutError)
├── ActorStartError     on_start raised; the cause is chained as __cause__
├── UnhandledMessage    receive() got a message it has no case for (also a TypeError)
└── SupervisorGaveUp    restart intensity exceeded; raised inside the supervisor, so it
                        crashes and its own parent decides (OTP escalation)
"""

from __future__ import annotations


class ActorError(Exception):
    """Base of every error the actor kernel raises."""


class ActorDead(ActorError):
    """The addressed actor is stopped for good; the message was not and will not be handled."""


class MailboxFull(ActorError):
    """The actor's bounded mailbox is full and its overflow policy is to refuse."""


class AskTimeout(ActorError, TimeoutError):
    """The actor did not reply within the ask's timeout. The message is dropped unhandled if
    the actor had not started on it yet."""


class ActorStartError(ActorError):
    """The actor's on_start hook raised."""


class UnhandledMessage(ActorError, TypeError):
    """The actor has no case for this message type."""


class SupervisorGaveUp(ActorError):
    """More than `intensity` restarts happened within `period` seconds."""
