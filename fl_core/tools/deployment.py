"""A local Flower Deployment Engine on 127.0.0.1: one SuperLink, several SuperNodes, ``flwr run``.

For tests, benchmarks and trying the example app on one machine. Every process starts in its own
process group under a private ``FLWR_HOME``; ``close()`` (also on leaving the ``with`` block, even
after an error) signals each group, then looks for any process still carrying that FLWR_HOME in its
environment (the SuperExec and app processes the engine started) and ends those by pid.
Needs the ``flwr`` executables next to this Python (the ``secagg[flower]`` extra).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LocalDeployment", "FlwrRun", "free_port"]

CONNECTION = "local-deploy"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


@dataclass
class FlwrRun:
    run_id: int | None
    status: str | None        # e.g. "finished:completed", from `flwr list`
    returncode: int
    output: str
    seconds: float
    info: dict | None = None  # the run's row of `flwr list --format json`

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status.endswith("completed")


class LocalDeployment:
    """``with LocalDeployment(num_nodes=3) as dep: dep.run(app_dir, {...})``.

    ``node_config(i)`` gives extra node-config entries for SuperNode i (besides partition-id and
    num-partitions).
    """

    def __init__(self, num_nodes: int, *, home: str | os.PathLike | None = None, node_config=None,
                 start_timeout: float = 60.0) -> None:
        self.num_nodes = num_nodes
        self._tmp = None if home is not None else tempfile.TemporaryDirectory(prefix="flwr-local-")
        self.home = Path(home if home is not None else self._tmp.name).resolve()
        self.node_config = node_config or (lambda i: {})
        self.start_timeout = start_timeout
        self.bin = Path(sys.executable).parent
        self.env = dict(os.environ, FLWR_HOME=str(self.home / "flwr"), FLWR_TELEMETRY_ENABLED="0",
                        FLWR_DISABLE_UPDATE_CHECK="1", PYTHONUNBUFFERED="1",
                        PATH=str(self.bin) + os.pathsep + os.environ.get("PATH", ""))
        self.superlink: subprocess.Popen | None = None
        self.nodes: dict[int, subprocess.Popen] = {}
        self.port = 0
        self.leftovers: list[int] = []  # pids found and ended by close() beyond the groups we started

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> LocalDeployment:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.home / f"{name}.log", "ab")
        try:
            return subprocess.Popen([str(self.bin / args[0]), *args[1:]], env=self.env, cwd=self.home,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def start(self) -> None:
        (self.home / "flwr").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        (self.home / "flwr" / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "127.0.0.1:{self.port}"\ninsecure = true\n')
        self.superlink = self._spawn("superlink", [
            "flower-superlink", "--insecure", "--host", "127.0.0.1", "--port", str(self.port),
            "--disable-runtime-dependency-installation"])
        if not _wait_port(self.port, self.start_timeout):
            raise RuntimeError(f"SuperLink did not listen on port {self.port}: {self.log('superlink')[-2000:]}")
        for i in range(self.num_nodes):
            self.start_node(i)

    def start_node(self, i: int) -> None:
        cfg = {"partition-id": i, "num-partitions": self.num_nodes, **self.node_config(i)}
        text = " ".join(f"{k}={json.dumps(v) if isinstance(v, str) else v}" for k, v in cfg.items())
        self.nodes[i] = self._spawn(f"supernode-{i}", [
            "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{self.port}", "--host", "127.0.0.1",
            "--port", str(free_port()), "--node-config", text])

    def kill_node(self, i: int, sig: int = signal.SIGKILL) -> None:
        """Kill SuperNode i's whole process group (the node and the ClientApp it may be running)."""
        _signal_group(self.nodes[i], sig)
        self.nodes[i].wait(10)

    def close(self) -> None:
        """End every process this deployment started; idempotent."""
        procs = list(self.nodes.values()) + ([self.superlink] if self.superlink else [])
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait(5)
        for p in procs:  # a group may outlive its leader
            _signal_group(p, signal.SIGKILL)
        _wait_groups_gone([p.pid for p in procs], timeout=10)  # killed members stay zombies until reaped
        self.leftovers = self._end_leftovers()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _end_leftovers(self) -> list[int]:
        """Processes (ours: same FLWR_HOME in their environment) that escaped the groups."""
        found = self.processes()
        for pid in found:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return found

    def processes(self) -> list[int]:
        """Pids of live processes whose environment holds this deployment's FLWR_HOME."""
        marker = f"FLWR_HOME={self.env['FLWR_HOME']}".encode() + b"\0"
        out = []
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                if marker in (d / "environ").read_bytes() + b"\0":
                    stat = (d / "stat").read_text()
                    if stat.rsplit(")", 1)[1].split()[0] != "Z":  # zombies are already gone
                        out.append(int(d.name))
            except OSError:
                continue
        return out

    def log(self, name: str) -> str:
        path = self.home / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ---------------------------------------------------------------- runs

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.bin / "flwr"), *args], env=self.env, cwd=self.home, capture_output=True,
                              text=True, timeout=timeout, start_new_session=True)

    def run(self, app_dir: str | os.PathLike, run_config: dict | None = None, *, timeout: float = 300.0) -> FlwrRun:
        """``flwr run APP local-deploy --stream`` and the run's final status (``flwr run`` exits 0
        even when the ServerApp failed, so the status comes from ``flwr list``)."""
        args = ["run", str(Path(app_dir).resolve()), CONNECTION, "--stream"]
        if run_config:
            args += ["--run-config", " ".join(f"{k}={_toml(v)}" for k, v in run_config.items())]
        t0 = time.monotonic()
        proc = subprocess.Popen([str(self.bin / "flwr"), *args], env=self.env, cwd=self.home, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            output, _ = proc.communicate()
            output += f"\n[flwr run killed after {timeout} s]"
        seconds = time.monotonic() - t0
        m = re.search(r"run\s*(?:id)?\D{0,20}?(\d{6,})", output, re.IGNORECASE)
        run_id = int(m.group(1)) if m else None
        info = self.run_info(run_id) if run_id is not None else None
        status = None if info is None else str(info.get("status"))
        return FlwrRun(run_id, status, proc.returncode, output, seconds, info)

    def run_info(self, run_id: int, *, wait: float = 30.0) -> dict | None:
        """The run's row of ``flwr list``, once it is finished (or after ``wait`` seconds)."""
        deadline = time.monotonic() + wait
        row = None
        while True:
            res = self.flwr("list", CONNECTION, "--run-id", str(run_id), "--format", "json")
            try:
                rows = json.loads(res.stdout).get("runs", [])
                row = next((r for r in rows if int(r.get("run-id", -1)) == run_id), row)
            except (json.JSONDecodeError, AttributeError, ValueError):
                pass
            if (row and str(row.get("status", "")).startswith("finished")) or time.monotonic() > deadline:
                return row
            time.sleep(1.0)


def _toml(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _wait_groups_gone(pgids: list[int], *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for pgid in pgids:
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except (ProcessLookupError, PermissionError):
                break
            time.sleep(0.1)


def _signal_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass
