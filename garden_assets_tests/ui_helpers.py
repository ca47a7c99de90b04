"""Helpers for the browser test: a real Dagster webserver + daemon in a temporary home, and headless Chromium.

Used by ``test_ui_browser.py`` only. Nothing here imports Playwright, so the test module can skip cleanly
when it is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = ROOT / ".venv" / "bin"
CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download is blocked here: it drives Debian's Chromium with these flags.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# nux: the "Join the Dagster community" modal would cover the page; telemetry: nothing leaves the machine.
DAGSTER_YAML = "telemetry:\n  enabled: false\nnux:\n  enabled: false\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dagster_bin(name: str) -> str:
    exe = VENV_BIN / name
    return str(exe) if exe.exists() else (shutil.which(name) or name)


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


@dataclass
class DagsterUI:
    """A webserver and a daemon on one temporary instance; ``stop()`` always ends both process groups."""

    home: Path  # GARDEN_HOME; DAGSTER_HOME is home/dagster
    drops: Path
    logs: Path
    port: int = field(default_factory=free_port)
    locations: list[str] = field(default_factory=list)  # code location names, once loaded
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)  # overrides env() (e.g. a settle time of 0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def storage(self) -> Path:
        return self.home / "storage"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "GARDEN_"))}
        env.update(
            GARDEN_HOME=str(self.home),
            DAGSTER_HOME=str(self.dagster_home),
            GARDEN_DROPS=str(self.drops),
            # The drops sensor stays RUNNING but never sees the drop as settled, so the only run of the
            # partition is the one the test launches from the UI (the test adds the partition itself).
            GARDEN_DROP_SETTLE_S="1000000000",
            HF_HUB_OFFLINE="1",
            TRANSFORMERS_OFFLINE="1",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def prepare(self, partitions_def: str, keys: list[str], dagster_yaml: str = DAGSTER_YAML) -> None:
        import dagster as dg

        self.dagster_home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.dagster_home / "dagster.yaml").write_text(dagster_yaml)
        # Opened once here, so its SQLite storages exist before the daemon and its code server start: two processes
        # creating a fresh schedules.db at once can both stamp it (two alembic heads; neither can open it again).
        with dg.DagsterInstance.from_config(str(self.dagster_home)) as instance:
            if keys:
                instance.add_dynamic_partitions(partitions_def, keys)

    def start(self, only: tuple[str, ...] = ("webserver", "daemon")) -> None:
        commands = {
            "webserver": [dagster_bin("dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.port), "-w", "workspace.yaml"],
            "daemon": [dagster_bin("dagster-daemon"), "run", "-w", "workspace.yaml"],
        }
        for name, cmd in commands.items():
            if name not in only:
                continue
            out = open(self.logs / f"{name}.log", "wb")
            try:
                # Own session = own process group: stop() ends the code servers and run workers with it.
                self.procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=out,
                                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                                    start_new_session=True)
            finally:
                out.close()

    def diagnostics(self) -> str:
        parts = []
        for name, proc in self.procs.items():
            parts.append(f"--- {name} (exit code {proc.poll()}) log tail:\n{log_tail(self.logs / f'{name}.log')}")
        return "\n".join(parts)

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"dagster {name} exited with {proc.returncode}\n{self.diagnostics()}")

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 15) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            payload = json.loads(resp.read())
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]

    def wait_ready(self, timeout: float = 120) -> float:
        """Poll /server_info, then the workspace until the code location has loaded. Returns seconds waited."""
        started = time.monotonic()
        deadline = started + timeout
        while True:
            self._check_alive()
            try:
                with urllib.request.urlopen(f"{self.url}/server_info", timeout=5) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {self.url}/server_info after {timeout:.0f} s\n{self.diagnostics()}")
            time.sleep(0.5)
        query = """{ workspaceOrError { __typename ... on Workspace { locationEntries {
                       name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""
        while True:
            self._check_alive()
            entries = self.graphql(query)["workspaceOrError"].get("locationEntries") or []
            loaded = [e for e in entries if e["loadStatus"] == "LOADED"]
            if entries and len(loaded) == len(entries):
                errors = [e for e in entries if e["locationOrLoadError"]["__typename"] != "RepositoryLocation"]
                if errors:
                    raise RuntimeError(f"code location failed to load: {errors}")
                self.locations = [e["name"] for e in entries]
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise TimeoutError(f"code location not loaded after {timeout:.0f} s: {entries}\n{self.diagnostics()}")
            time.sleep(0.5)

    def group_url(self, group: str) -> str:
        """The lineage page of one asset group (the global page collapses groups once there are several)."""
        return f"{self.url}/locations/{urllib.parse.quote(self.locations[0])}/asset-groups/{urllib.parse.quote(group)}"

    def run_status(self, run_id: str) -> str:
        data = self.graphql("query($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }", {"id": run_id})
        return data["runOrError"].get("status") or data["runOrError"]["__typename"]

    def wait_run(self, run_id: str, timeout: float = 150) -> str:
        """Poll the run through the UI's GraphQL endpoint until it ends (or the bounded timeout)."""
        deadline = time.monotonic() + timeout
        status = "?"
        while time.monotonic() < deadline:
            self._check_alive()
            status = self.run_status(run_id)
            if status in ("SUCCESS", "FAILURE", "CANCELED", "RunNotFoundError"):
                return status
            time.sleep(1)
        raise TimeoutError(f"run {run_id} still {status} after {timeout:.0f} s\n{self.diagnostics()}")

    def latest_materialization_run(self, asset: str) -> str | None:
        data = self.graphql(
            "query($k: AssetKeyInput!) { assetOrError(assetKey: $k) { __typename ... on Asset { assetMaterializations(limit: 1) { runId } } } }",
            {"k": {"path": [asset]}},
        )
        events = data["assetOrError"].get("assetMaterializations") or []
        return events[0]["runId"] if events else None

    def stop(self, grace: float = 15) -> None:
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGKILL)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # A run worker that left our process groups still carries our unique DAGSTER_HOME: end it by pid.
        for pid in _pids_with_env(f"DAGSTER_HOME={self.dagster_home}"):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the leader's pid
    except (ProcessLookupError, PermissionError):
        pass


def _pids_with_env(needle: str) -> list[int]:
    me, found, marker = os.getpid(), [], needle.encode() + b"\0"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if marker in (entry / "environ").read_bytes() + b"\0":
                found.append(int(entry.name))
        except OSError:
            continue
    return found
