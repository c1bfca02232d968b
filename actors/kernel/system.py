"""ActorSystem: the top of the tree. It starts top-level actors (normally one root supervisor),
finds actors by path, and reports when a top-level actor ends, since nothing above it can
restart it: the process decides (the gateway shuts down and systemd restarts it)."""

from __future__ import annotations

import asyncio

import structlog

from actors.kernel.cell import ActorCell, ChildExited
from actors.kernel.ref import ActorRef
from actors.kernel.snapshot import ActorSnapshot, ActorState
from actors.kernel.spec import ChildSpec

log = structlog.get_logger("actors.kernel")


class ActorSystem:
    def __init__(self) -> None:
        self._top: dict[str, ActorCell] = {}
        self._exits: asyncio.Queue[ChildExited] = asyncio.Queue()

    async def spawn(self, spec: ChildSpec) -> ActorRef:
        """Start a top-level actor; returns once its on_start (and, for a supervisor, its
        whole subtree's) has completed. Raises ActorStartError if it fails to start."""
        if spec.name in self._top:
            raise ValueError(f"a top-level actor named {spec.name!r} exists")
        cell = ActorCell(spec, parent=None, exit_listener=self._on_exit)
        self._top[spec.name] = cell
        try:
            await cell.start()
        except BaseException:
            del self._top[spec.name]
            raise
        return cell.ref

    def _on_exit(self, exited: ChildExited) -> None:
        cell = exited.cell
        cell.close(ActorState.FAILED if exited.error is not None else ActorState.STOPPED)
        log.error("top_level_actor_exited", actor=cell.path, error=repr(exited.error))
        self._exits.put_nowait(exited)

    async def wait_exit(self) -> ChildExited:
        """Resolves when a top-level actor ends on its own (a crash, or a supervisor that gave
        up): the signal for the process to shut down."""
        return await self._exits.get()

    def lookup(self, path: str) -> ActorRef:
        """The ref at `path` ("root/backends/mixtral-8x7b#0"); LookupError if there is none."""
        top, *rest = path.split("/")
        cell = self._top.get(top)
        for name in rest:
            if cell is None:
                break
            cell = cell.children.get(name)
        if cell is None:
            raise LookupError(f"no actor at {path!r}")
        return cell.ref

    def snapshot(self) -> list[ActorSnapshot]:
        return [cell.snapshot() for cell in self._top.values()]

    async def shutdown(self) -> None:
        """Stop top-level actors in reverse start order (each stops its subtree first)."""
        for cell in reversed(list(self._top.values())):
            await cell.stop(final=True)
