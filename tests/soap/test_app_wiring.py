"""The SOAP router inside the coordinator's own app (``central.app.create_app``):
the router's lifespan builds the gateway from the app's context and runs the
Legacy notifier, with no extra wiring."""

from __future__ import annotations

import time
from pathlib import Path

from central.app import create_app
from shared.codes import Outcome
from tests.soap.conftest import AppServer, LegacyServer, fast_soap_settings, open_coordinator
from tests.soap.standard_clients import (
    control,
    execute_client,
    get_client,
    header,
    payload,
    states_of,
)


def test_create_app_serves_soap_and_notifies_legacy(tmp_path: Path, legacy: LegacyServer) -> None:
    coordinator = open_coordinator(tmp_path / "central.sqlite3")  # migrated and seeded
    try:
        app = create_app(coordinator.settings)
        with AppServer(None, fast_soap_settings(legacy_endpoint=legacy.url), app=app) as server:
            client = execute_client(server)
            reply = client.call(
                "CreateEndDeviceControls",
                Header=header("wired-1"),
                Payload=payload(control(["MTR-001"], "3.31.0.18", "W-1")),
            )
            assert reply.Reply.Result == "OK"
            order_id = reply.Payload.EndDeviceControls.EndDeviceControl[0].mRID
            coordinator.finish(order_id, Outcome.CONNECTED, energy=5.0)
            events = legacy.wait_for(1)
            assert len(events) == 1
            assert b"3.31.0.42" in legacy.received[0]
            assert b"corr-wired-1" in legacy.received[0]
            # Legacy's acknowledgement is committed just after Legacy has answered
            deadline = time.monotonic() + 10
            state = ""
            getter = get_client(server)
            while state != "reported" and time.monotonic() < deadline:
                found = getter.call(
                    "GetEndDeviceControls",
                    Header=header("wired-2", verb="get"),
                    Request={
                        "GetEndDeviceControls": {"EndDeviceControl": [{"issuerTrackingID": "W-1"}]}
                    },
                )
                state = states_of(found)[order_id]
                time.sleep(0.05)
            assert state == "reported"
    finally:
        coordinator.close()
