"""docs/deployment.md performed on this machine, as root, command by command (issue 15).

The ``sh`` blocks of the document run in order in bash, sharing their variables.
What the test changes, and nothing else:

* paths: ``/etc/rcd``, ``/etc/mosquitto``, ``/etc/systemd``, ``/opt/ami-rcd``,
  ``/usr/share/doc``, ``/usr/lib/*.d`` and ``/var/lib/rcd-*`` live under a temporary
  root (``deploy/install.sh`` is given it as ``RCD_ROOT``); the service users and the
  PostgreSQL role and database are real;
* ports: the broker's 1883 and the coordinator's 8080 become free ports, so the
  system's own mosquitto on 1883 is not disturbed;
* ``apt-get install`` checks the packages are there; ``pip install`` links the
  packages ``make venv`` installed from the same constraints.txt (no network);
* ``systemctl`` (there is no systemd in CI): the test starts what the unit says,
  as the unit's user and groups, with its EnvironmentFile sourced by that user, its
  ExecStartPre then its ExecStart; mosquitto from Debian's stock main file (taken
  from the package) with our drop-in in its conf.d, as the stock unit starts it;
* ``METERS_CSV`` and ``METER`` name a simulated meter over TCP (real DLMS bytes),
  so that the order of section 5 reaches a meter.

It skips when not root or when mosquitto, PostgreSQL on 127.0.0.1:5432 or the
mosquitto package file are missing. Users, role, database and files it made are
removed at the end; processes it started are stopped by their pid.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "deployment.md"
USERS = ("rcd-central", "rcd-edge")

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="performs docs/deployment.md as root"),
    pytest.mark.timeout(300),
]


# ------------------------------------------------------------------ the document
def doc_commands() -> list[tuple[str, str]]:
    """(section, command) for every command of the sh blocks, continuations joined."""
    section, out, in_block, pending = "", [], False, ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.strip() == "```sh":
            in_block = True
        elif line.strip() == "```" and in_block:
            in_block = False
        elif in_block and line.strip():
            pending += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                out.append((section, pending.strip()))
                pending = ""
    return out


def _stock_mosquitto_conf(work: Path) -> str:
    """Debian's /etc/mosquitto/mosquitto.conf as the package ships it."""
    debs = sorted(Path("/var/cache/apt/archives").glob("mosquitto_*.deb"))
    if not debs:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(["apt-get", "download", "mosquitto"], cwd=work, check=True,
                           capture_output=True, timeout=120)
        debs = sorted(work.glob("mosquitto_*.deb"))
    if not debs:
        pytest.skip("no mosquitto package file to take the stock configuration from")
    subprocess.run(["dpkg-deb", "-x", str(debs[-1]), str(work / "deb")], check=True)
    return (work / "deb" / "etc" / "mosquitto" / "mosquitto.conf").read_text()


# ------------------------------------------------------------------ the machine
class Machine:
    """The temporary root, the services started from their units, and cleanup."""

    def __init__(self, root: Path, work: Path) -> None:
        self.root = root
        self.work = work
        self.mqtt_port = free_port()
        self.http_port = free_port()
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.state = work / "state.sh"
        self.state.write_text("")
        self.log = work / "doc.log"

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def relocate(self, command: str) -> str:
        for prefix in ("/etc/rcd", "/etc/mosquitto", "/etc/systemd", "/opt/ami-rcd",
                       "/usr/share/doc/ami-rcd", "/var/lib/rcd-"):
            command = re.sub(rf"(?<![\w/.]){re.escape(prefix)}", str(self.root) + prefix, command)
        command = command.replace("127.0.0.1:8080", f"127.0.0.1:{self.http_port}")
        return command.replace("127.0.0.1:1883", f"127.0.0.1:{self.mqtt_port}")

    def bash(self, commands: list[str], env: dict[str, str]) -> None:
        script = "\n".join(
            ["set -euo pipefail -a", f". {self.state}", *commands,
             f"declare -px | grep -v -e ' PWD=' -e ' OLDPWD=' -e ' SHLVL=' > {self.state}"]
        )
        done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=180)
        with self.log.open("a") as log:
            log.write(f"$ {commands}\n{done.stdout}{done.stderr}\n")
        assert done.returncode == 0, f"{commands}\n{done.stdout}\n{done.stderr}"

    def relocate_files(self) -> None:
        """The installed configuration files name their absolute paths: under the root."""
        for name in ("/etc/mosquitto/conf.d/ami-rcd.conf", "/etc/rcd/central/central.env",
                     "/etc/rcd/edge/edge.toml"):
            path = self.path(name)
            path.write_text(self.relocate(path.read_text()))

    # -- what the test substitutes for systemctl ---------------------------------
    def start_mosquitto(self) -> None:
        conf_d = self.path("/etc/mosquitto/conf.d/ami-rcd.conf")
        conf_d.write_text(re.sub(r"^listener 1883 ", f"listener {self.mqtt_port} ",
                                 conf_d.read_text(), flags=re.M))
        mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        log = open(self.work / "mosquitto.out", "wb")
        self.processes["mosquitto"] = subprocess.Popen(
            [mosquitto, "-c", str(self.path("/etc/mosquitto/mosquitto.conf"))],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        _wait_port(self.mqtt_port, self.processes["mosquitto"], self.work / "mosquitto.out")

    def unit(self, name: str) -> dict[str, list[str]]:
        values: dict[str, list[str]] = {}
        text = self.path(f"/etc/systemd/system/{name}.service").read_text()
        for line in text.splitlines():
            if "=" in line and not line.startswith(("#", "[")):
                key, value = line.split("=", 1)
                values.setdefault(key.strip(), []).append(self.relocate(value.strip()))
        return values

    def start_unit(self, name: str) -> subprocess.Popen[bytes]:
        unit = self.unit(name)
        user, group = unit["User"][0], unit["Group"][0]
        groups = ",".join([group, *unit.get("SupplementaryGroups", [])])
        env_files = [f.lstrip("-") for f in unit.get("EnvironmentFile", [])]
        env_files = [f for f in env_files if Path(f).exists()]
        ports = {"RCD_MQTT_PORT=1883": f"RCD_MQTT_PORT={self.mqtt_port}",
                 "RCD_HTTP_PORT=8080": f"RCD_HTTP_PORT={self.http_port}"}
        for file in env_files:
            text = Path(file).read_text()
            for old, new in ports.items():
                text = text.replace(old, new)
            Path(file).write_text(text)
        toml = self.path("/etc/rcd/edge/edge.toml")
        toml.write_text(toml.read_text().replace("127.0.0.1:1883", f"127.0.0.1:{self.mqtt_port}"))

        def as_service(command: str) -> list[str]:
            sourced = "".join(f"set -a; . {f}; set +a; " for f in env_files)
            return ["setpriv", f"--reuid={user}", f"--regid={group}", f"--groups={groups}",
                    "env", "-i", "PATH=/usr/bin:/bin", "PYTHONUNBUFFERED=1",
                    "bash", "-c", f"{sourced}exec {command}"]

        cwd = unit.get("WorkingDirectory", ["/"])[0]
        for pre in unit.get("ExecStartPre", []):
            done = subprocess.run(as_service(pre), cwd=cwd, capture_output=True, text=True,
                                  timeout=120)
            assert done.returncode == 0, f"{name} ExecStartPre {pre}: {done.stderr}"
        log = open(self.work / f"{name}.out", "wb")
        process = subprocess.Popen(as_service(unit["ExecStart"][0]), cwd=cwd, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.processes[name] = process
        return process

    def systemctl(self, command: str) -> None:
        words = command.split()
        if words[1:] == ["restart", "mosquitto"]:
            self.start_mosquitto()
        elif words[1:3] == ["enable", "--now"]:
            for unit in words[3:]:
                self.start_unit(unit)
                self.wait_ready(unit)
        else:
            raise AssertionError(f"the test does not know {command!r}")

    def wait_ready(self, unit: str) -> None:
        process = self.processes[unit]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert process.poll() is None, (self.work / f"{unit}.out").read_text()
            if unit == "rcd-central":
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"http://127.0.0.1:{self.http_port}/ready").status_code == 200:
                        return
            elif "connected" in (self.work / f"{unit}.out").read_text() or _link_up(self):
                return
            time.sleep(0.3)
        raise AssertionError(f"{unit} not ready:\n{(self.work / f'{unit}.out').read_text()}")

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def _link_up(machine: Machine) -> bool:
    db = machine.path("/var/lib/rcd-edge")
    return any(db.glob("*.sqlite*")) and "connected" in subprocess.run(
        ["setpriv", "--reuid=rcd-edge", "--regid=rcd-edge", "--clear-groups",
         str(machine.path("/opt/ami-rcd/.venv/bin/rcd")), "edge", "status", "--config",
         str(machine.path("/etc/rcd/edge/edge.toml"))],
        capture_output=True, text=True,
    ).stdout


def _wait_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(log.read_text())


def _mode_owner(path: Path) -> tuple[str, str, str]:
    info = path.stat()
    return (oct(stat.S_IMODE(info.st_mode)), pwd.getpwuid(info.st_uid).pw_name,
            grp.getgrgid(info.st_gid).gr_name)


def _can_read(user: str, path: Path) -> bool:
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups",
                           "head", "-c1", str(path)], capture_output=True).returncode == 0


def _psql(sql: str, db: str = "postgres") -> str:
    done = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", db, "-tAc", sql],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _drop_database() -> None:
    _psql("DROP DATABASE IF EXISTS rcd WITH (FORCE)")
    _psql("DROP ROLE IF EXISTS rcd")


def _link_venv(target: Path) -> None:
    """What ``pip install -c constraints.txt .`` gives, from the packages make venv installed."""
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(target)], check=True)
    import sysconfig

    site = sysconfig.get_paths()["purelib"]
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    pth = target / "lib" / version / "site-packages" / "ami-rcd-test.pth"
    pth.write_text(f"import site; site.addsitedir({site!r})\n")
    rcd = target / "bin" / "rcd"
    rcd.write_text(f"#!{target}/bin/python\nimport sys\nfrom shared.cli import main\n"
                   "sys.exit(main())\n")
    rcd.chmod(0o755)


# ------------------------------------------------------------------ fixtures
@pytest.fixture
def machine() -> Iterator[Machine]:
    for tool in ("mosquitto_passwd", "psql", "createdb", "openssl", "setpriv", "useradd"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 for the service venv")
    system = subprocess.run(["/usr/bin/python3", "-c", "import sys; print(sys.version_info[:2])"],
                            capture_output=True, text=True).stdout.strip()
    if system != str(sys.version_info[:2]):
        pytest.skip(f"/usr/bin/python3 is {system}, the test's packages are for "
                    f"{sys.version_info[:2]}: they cannot be linked into the service venv")
    try:
        _psql("SELECT 1")
    except (AssertionError, OSError):
        pytest.skip("no PostgreSQL on 127.0.0.1:5432 with trust for postgres")
    existing = {u for u in USERS if _exists(u)}
    root = Path(tempfile.mkdtemp(prefix="rcd-deploy-", dir="/tmp"))
    work = Path(tempfile.mkdtemp(prefix="rcd-deploy-work-", dir="/tmp"))
    root.chmod(0o755)
    machine = Machine(root, work)
    _drop_database()
    try:
        yield machine
    finally:
        machine.stop()
        _drop_database()
        for user in USERS:
            if user not in existing and _exists(user):
                subprocess.run(["userdel", user], check=False)
                subprocess.run(["groupdel", user], check=False, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


def _exists(user: str) -> bool:
    try:
        pwd.getpwnam(user)
    except KeyError:
        return False
    return True


# ------------------------------------------------------------------ the test
def test_deployment_doc_as_written(machine: Machine) -> None:
    m = machine
    stock = _stock_mosquitto_conf(m.work)
    assert "include_dir /etc/mosquitto/conf.d" in stock and "persistence_location" in stock
    # The package's state: its main file, conf.d, and the directories its unit makes.
    stock_root = stock
    for path in ("/run/mosquitto", "/var/log/mosquitto", "/var/lib/mosquitto",
                 "/etc/mosquitto/conf.d"):
        stock_root = stock_root.replace(path, str(m.root) + path)
        m.path(path).mkdir(parents=True, exist_ok=True)
        shutil.chown(m.path(path), "mosquitto", "mosquitto")
    m.path("/etc/mosquitto/mosquitto.conf").write_text(stock_root)

    sim_port = free_port()
    sim = subprocess.Popen([sys.executable, "-m", "shared.cli", "sim", "--tcp-port",
                            str(sim_port), "--meter-id", "DC-0001-SIM1"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           start_new_session=True)
    m.processes["sim"] = sim
    meters = m.work / "meters.csv"
    meters.write_text("meter_id,concentrator_id,topology,transport,host,port,service_address,"
                      "comuna\nDC-0001-SIM1,DC-0001,point_to_point,tcp,127.0.0.1,"
                      f"{sim_port},Av. Matta 100,Santiago\n")
    meters.chmod(0o644)
    m.work.chmod(0o755)

    env = {"PATH": os.environ["PATH"], "HOME": str(m.work), "LANG": "C.UTF-8",
           "RCD_ROOT": str(m.root), "METERS_CSV": str(meters), "METER": "DC-0001-SIM1"}
    commands = doc_commands()
    sections = list(dict.fromkeys(section for section, _ in commands))
    assert sections[:6] == [s for s in sections if s[0].isdigit()][:6]
    outputs: dict[str, str] = {}
    for section in sections:
        chunk: list[str] = []
        for command in [c for s, c in commands if s == section]:
            if command.startswith("apt-get install"):
                chunk.append("command -v mosquitto_passwd psql createdb && python3 -c 'import venv'")
            elif " -m venv " in command and "pip install" in command:
                m.bash(chunk, env) if chunk else None
                chunk = []
                _link_venv(m.path("/opt/ami-rcd/.venv"))
            elif command.startswith("systemctl "):
                m.bash(chunk, env) if chunk else None
                chunk = []
                m.systemctl(command)
            else:
                chunk.append(m.relocate(command))
        if chunk:
            m.bash(chunk, env)
        if section.startswith("0."):
            m.relocate_files()
        outputs[section] = m.log.read_text()
        check_section(m, section)


def check_section(m: Machine, section: str) -> None:
    number = section.split(".")[0]
    if number == "0":
        _check_install(m)
    elif number == "1":
        key = m.path("/etc/rcd/central/coordinator.key")
        assert _mode_owner(key) == ("0o640", "root", "rcd-central")
        assert _can_read("rcd-central", key) and not _can_read("rcd-edge", key)
        assert _mode_owner(m.path("/etc/rcd/edge/coordinator.pub"))[0] == "0o644"
    elif number == "2":
        drop_in = m.path("/etc/mosquitto/conf.d/ami-rcd.conf").read_text()
        directives = {line.split()[0] for line in drop_in.splitlines()
                      if line.strip() and not line.startswith("#")}
        stock = {line.split()[0] for line in m.path("/etc/mosquitto/mosquitto.conf").read_text()
                 .splitlines() if line.strip() and not line.startswith("#")}
        assert not (directives & stock) - {"include_dir"}, directives & stock
        out = (m.work / "mosquitto.out").read_text()
        assert "Error" not in out, out
        assert m.processes["mosquitto"].poll() is None
        passwd = m.path("/etc/mosquitto/ami-rcd/passwd")
        assert _mode_owner(passwd) == ("0o640", "root", "mosquitto")
        assert {line.split(":")[0] for line in passwd.read_text().splitlines()} == {
            "rcd-central-1", "DC-0001", "rcd-protect"}
        _check_broker_refuses_anonymous(m.mqtt_port)
    elif number == "3":
        _check_central(m)
    elif number == "4":
        _check_edge(m)
    elif number == "5":
        log = m.log.read_text()
        tail = log[log.rindex("curl -fsS"):]
        assert '"status"' in tail or "ok" in tail.lower()
        assert "link" in tail and "connected" in tail
        assert "disconnected" in tail and "signed and sent to the concentrator" in tail


def _check_install(m: Machine) -> None:
    for user in USERS:
        entry = pwd.getpwnam(user)
        assert entry.pw_shell.endswith("nologin") and entry.pw_dir == f"/var/lib/{user}"
    assert "rcd-edge" in grp.getgrnam("dialout").gr_mem
    # the directories, exactly as the tmpfiles.d snippet a package would carry says
    for line in (ROOT / "deploy/tmpfiles.d/ami-rcd.conf").read_text().splitlines():
        if line.startswith("d "):
            _, path, mode, user, group, _age = line.split()
            assert _mode_owner(m.path(path)) == (oct(int(mode, 8)), user, group), path
    assert _mode_owner(m.path("/etc/rcd/central/central.env")) == ("0o640", "root", "rcd-central")
    assert _mode_owner(m.path("/etc/rcd/edge/edge.toml")) == ("0o640", "root", "rcd-edge")
    assert _can_read("rcd-edge", m.path("/etc/rcd/edge/edge.toml"))
    assert not _can_read("rcd-central", m.path("/etc/rcd/edge/edge.toml"))
    assert _mode_owner(m.path("/etc/mosquitto/conf.d/ami-rcd.conf"))[0] == "0o644"
    # the units' Documentation= files are installed
    for unit in ("rcd-central", "rcd-edge"):
        docs = m.unit(unit)["Documentation"][0].split()
        assert docs
        for url in docs:
            assert url.startswith("file://"), url
            assert m.path(url.removeprefix("file://")).is_file(), url
    # the env file is shell-sourceable as it ships
    done = subprocess.run(["bash", "-c", f"set -a; . {m.path('/etc/rcd/central/central.env')}; "
                           "python3 -c 'import json,os; json.loads(os.environ[\"RCD_API_TOKENS\"])'"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _check_broker_refuses_anonymous(port: int) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    codes: list[str] = []
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_connect = lambda _c, _u, _f, rc, _p: codes.append(str(rc))
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 5
    while not codes and time.monotonic() < deadline:
        time.sleep(0.05)
    client.loop_stop()
    client.disconnect()
    assert codes and codes[0] != "Success", codes


def _uid_of(process: subprocess.Popen[bytes]) -> str:
    # the unit's command runs under bash -c exec: the service is the process itself
    for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return pwd.getpwuid(int(line.split()[1])).pw_name
    raise AssertionError("no Uid")


def _check_central(m: Machine) -> None:
    assert _uid_of(m.processes["rcd-central"]) == "rcd-central"
    base = f"http://127.0.0.1:{m.http_port}"
    assert httpx.get(f"{base}/health").status_code == 200
    assert _psql("SELECT version_num FROM alembic_version", db="rcd")
    assert _psql("SELECT count(*) FROM meters", db="rcd") == "1"
    env = m.path("/etc/rcd/central/central.env").read_text()
    settings = [line for line in env.splitlines() if line and not line.startswith("#")]
    assert not [line for line in settings if "CHANGE-ME" in line]
    assert "RCD_ENVIRONMENT=production" in settings


def _check_edge(m: Machine) -> None:
    assert _uid_of(m.processes["rcd-edge"]) == "rcd-edge"
    assert _mode_owner(m.path("/etc/rcd/edge/broker.password")) == ("0o640", "root", "rcd-edge")
    base = f"http://127.0.0.1:{m.http_port}/api/v1/concentrators"
    viewer = re.search(r"VIEWER_TOKEN=\"?(\w+)", m.state.read_text())
    assert viewer is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = httpx.get(base, headers={"Authorization": f"Bearer {viewer.group(1)}"}).json()
        if any(r["id"] == "DC-0001" and r["online"] for r in rows):
            return
        time.sleep(0.5)
    raise AssertionError(f"DC-0001 not online: {rows}\n{(m.work / 'rcd-edge.out').read_text()}")
