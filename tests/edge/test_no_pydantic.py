"""The agent's process never imports pydantic: the structural guarantee behind its
memory figure (docs/edge_agent.md, "Memory"). Contracts and configuration are msgspec."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys
import edge_agent.__main__, edge_agent.cli, edge_agent.agent
loaded = sorted(name for name in sys.modules if name == "pydantic" or name.startswith("pydantic"))
print(",".join(loaded))
print("msgspec" in sys.modules)
"""


def test_agent_entry_modules_do_not_import_pydantic() -> None:
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=True)
    pydantic_modules, msgspec_loaded = proc.stdout.splitlines()
    assert pydantic_modules == "", f"the agent imports {pydantic_modules}"
    assert msgspec_loaded == "True"  # the probe did import the agent's contracts


CRYPTO_PROBE = """
import sys
import edge_agent.__main__, edge_agent.cli, edge_agent.agent, edge_agent.dlms_driver
print(",".join(sorted(n for n in sys.modules if n.split(".")[0] == "cryptography")))
"""


def test_agent_verifies_without_importing_cryptography() -> None:
    # cryptography carries its own OpenSSL (about 8 MB resident); the agent verifies
    # Ed25519 with the libcrypto ssl/hashlib already mapped (shared.ed25519)
    proc = subprocess.run([sys.executable, "-c", CRYPTO_PROBE], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, check=True)
    assert proc.stdout.strip() == "", f"the agent imports {proc.stdout.strip()}"
