"""The introspection snapshot: exact for every actor, nested for supervisors."""

from __future__ import annotations

import json

from actors.kernel import ActorState, ActorSystem, ChildSpec, Strategy, Supervisor
from tests.actors.kernel.helpers import Boom, Count, Echo, Recorder, worker


async def test_snapshot_tree_is_exact(system: ActorSystem) -> None:
    recorder = Recorder()
    backends = ChildSpec(
        "backends",
        lambda: Supervisor(
            [worker("m#0", recorder, capacity=8), worker("m#1", recorder)],
            strategy=Strategy.ONE_FOR_ONE,
            intensity=7,
            period=30,
        ),
    )
    root = await system.spawn(
        ChildSpec("root", lambda: Supervisor([worker("auth", recorder), backends]))
    )
    m0 = system.lookup("root/backends/m#0")
    for _ in range(3):
        await m0.ask(Count())
    await m0.tell(Boom("upstream gone"))
    await m0.ask(Echo(None))

    tree = root.snapshot().to_dict()
    assert json.loads(json.dumps(tree)) == tree  # serves as JSON as it is
    assert [c["name"] for c in tree["children"]] == ["auth", "backends"]
    backends_node = tree["children"][1]
    assert backends_node["class"] == "Supervisor"
    assert backends_node["details"] == {
        "strategy": "one_for_one",
        "intensity": 7,
        "period_s": 30,
        "recent_restarts": 1,
    }
    m0_node = backends_node["children"][0]
    assert m0_node["path"] == "root/backends/m#0"
    assert m0_node["class"] == "Worker"
    assert m0_node["state"] == "running"
    assert m0_node["mailbox"] == {"depth": 0, "capacity": 8}
    assert m0_node["messages_handled"] == 5  # 3 counts, the crash, the echo
    assert m0_node["restarts"] == 1
    assert m0_node["last_failure"]["type"] == "RuntimeError"
    assert m0_node["last_failure"]["message"] == "upstream gone"
    assert m0_node["details"] == {"counter": 0}  # the new instance
    assert m0_node["uptime_s"] >= 0
    assert m0_node["children"] == []
    m1_node = backends_node["children"][1]
    assert (m1_node["restarts"], m1_node["last_failure"], m1_node["messages_handled"]) == (
        0,
        None,
        0,
    )
    assert root.snapshot().find("root/backends/m#1") is not None
    assert root.snapshot().find("root/nowhere") is None


async def test_snapshot_reports_stopped_actors(system: ActorSystem) -> None:
    recorder = Recorder()
    root = await system.spawn(ChildSpec("root", lambda: Supervisor([worker("a", recorder)])))
    await system.shutdown()
    snapshot = root.snapshot()
    assert snapshot.state is ActorState.STOPPED
    assert snapshot.uptime_s == 0.0
    assert snapshot.children[0].state is ActorState.STOPPED
    assert snapshot.children[0].actor_class == "Worker"
    assert [s.path for s in system.snapshot()] == ["root"]
