"""A PLC for tests: a real asyncua server on a loopback port, in a thread with its own event loop.

It can be stopped and started again on the same port with the same nodes, like a PLC rebooting.
Values are written with an explicit source timestamp and status code, as a device would.
"""

from __future__ import annotations

import asyncio
import threading
from datetime import datetime
from typing import Any

from asyncua import Server, ua

#: Node ids (namespace 2) and initial values of the variables the server offers.
VARIABLES: dict[str, Any] = {
    "ns=2;s=Motor1.Temp": 21.5,
    "ns=2;i=7": ua.Variant(1500, ua.VariantType.Int32),
    "ns=2;s=Motor1.Running": True,
    "ns=2;s=Motor1.Name": "press 4",
}


class OpcUaPLC:
    """Start, stop and start again; ``write`` sets a value with its timestamp and status."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"opc.tcp://127.0.0.1:{port}/plc/"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="opcua-plc")
        self._thread.start()
        self._server: Server | None = None
        self._nodes: dict[str, Any] = {}

    async def _start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        namespace = await server.register_namespace("urn:ironwatch:test-plc")
        assert namespace == 2
        motor = await server.nodes.objects.add_object(ua.NodeId("Motor1", namespace), "Motor1")
        for node_id, value in VARIABLES.items():
            node = ua.NodeId.from_string(node_id)
            self._nodes[node_id] = await motor.add_variable(node, str(node.Identifier), value)
        await server.start()
        self._server = server

    def start(self) -> OpcUaPLC:
        """Listen (again) on ``port`` with the initial values."""
        self._run(self._start(), 30)
        return self

    def stop(self) -> None:
        """Shut the server down, like a PLC switched off."""
        if self._server is not None:
            self._run(self._server.stop(), 30)
            self._server = None

    def write(
        self, node_id: str, value: Any, source_ts: datetime | None = None, status: int = ua.StatusCodes.Good
    ) -> None:
        """Set a value with its source timestamp and status code."""
        variant = value if isinstance(value, ua.Variant) else ua.Variant(value)
        data = ua.DataValue(variant, StatusCode=ua.StatusCode(status), SourceTimestamp=source_ts)
        self._run(self._nodes[node_id].write_value(data), 10)

    def close(self) -> None:
        """Stop the server and its thread."""
        self.stop()
        self._run(_cancel_the_rest(), 10)  # sessions the server left behind
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def _run(self, coro: Any, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout_s)


async def _cancel_the_rest() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
