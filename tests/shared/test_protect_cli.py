"""`rcd protect keygen / sign / push` as an operator of the protect authority runs them."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from shared import topics
from shared.broker import MosquittoBroker
from shared.cli import main
from shared.protect import ProtectedListVerifier
from shared.signing import load_public_key_file


def test_keygen_sign_push_reaches_the_agent_retained(
    broker: MosquittoBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["protect", "keygen", "--out", str(tmp_path)]) == 0
    assert stat.S_IMODE((tmp_path / "protect.key").stat().st_mode) == 0o600
    assert main(["protect", "keygen", "--out", str(tmp_path)]) == 2  # never overwrites
    ids = tmp_path / "ids.txt"
    ids.write_text("MTR-3\n\nMTR-1\n")
    signed = tmp_path / "conc-a-v4.json"
    assert main(["protect", "sign", "--key", str(tmp_path / "protect.key"), "--concentrator",
                 "conc-a", "--version", "4", "--meters", "MTR-2,MTR-1", "--meters-file", str(ids),
                 "--out", str(signed)]) == 0
    assert main(["protect", "sign", "--key", str(tmp_path / "protect.key"), "--concentrator",
                 "conc-a", "--version", "0"]) == 2  # versions start at 1
    assert "version" in capsys.readouterr().err
    broker.add_user("rcd-protect")
    password = tmp_path / "pw"
    password.write_text(broker.password + "\n")
    assert main(["protect", "push", str(signed), "--broker", f"{broker.host}:{broker.port}",
                 "--password-file", str(password)]) == 0
    assert "retained on rcd/v1/c/conc-a/protected" in capsys.readouterr().out
    wrong = tmp_path / "wrong-pw"
    wrong.write_text("nope")
    assert main(["protect", "push", str(signed), "--broker", f"{broker.host}:{broker.port}",
                 "--password-file", str(wrong)]) == 2
    assert "refused" in capsys.readouterr().err

    got: list[bytes] = []
    arrived = threading.Event()
    agent = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="conc-a", protocol=mqtt.MQTTv5)
    agent.username_pw_set("conc-a", broker.password)
    agent.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.protected_list("conc-a"), qos=1)
    agent.on_message = lambda c, u, msg: (got.append(msg.payload), arrived.set())
    agent.connect(broker.host, broker.port)
    agent.loop_start()
    try:
        assert arrived.wait(5), "no retained list"
    finally:
        agent.disconnect()
        agent.loop_stop()
        clear_retained(broker)  # the session's broker: later tests' conc-a expects no list
    verifier = ProtectedListVerifier(load_public_key_file(tmp_path / "protect.pub"), "conc-a")
    plist = verifier.verify(got[0])
    assert plist.version == 4 and plist.meters == ["MTR-1", "MTR-2", "MTR-3"]


def clear_retained(broker: MosquittoBroker) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="rcd-protect",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set("rcd-protect", broker.password)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.publish(topics.protected_list("conc-a"), b"", qos=1, retain=True).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
