"""One container of a pod: its environment and command line, its process, probes and status."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import logging
import os
import re
import shlex
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phiops_devcluster.node_runtime.kube import Kube, Obj, now_rfc3339, q
from phiops_devcluster.node_runtime.network import PodNetwork
from phiops_devcluster.node_runtime.volumes import HostVolume, field_value

log = logging.getLogger("node-runtime.containers")

# Images that run for real, as this checkout's Python, and their entrypoints.
PHIOPS_ENTRYPOINTS = {
    "phiops-embed": "phiops_embed",
    "phiops-finetune": "phiops_finetune",
    "phiops-serve": "phiops_serve",
    "phiops-operator": "phiops_operator",
}
VENV_BIN = str(Path(sys.executable).parent)
CHECKOUT = Path(__file__).resolve().parents[3]
# What a real image would contain, here taken from the host: the Python environment and this
# checkout. Kept visible under volumes mounted over a parent.
IMAGE_PATHS = sorted({sys.prefix, sys.base_prefix, str(CHECKOUT)} - {"/", "/usr"})
# The package folders of this checkout (pyproject's `where`), ahead of the editable install,
# which may point at another checkout: a git worktree's pods run the worktree's code.
SOURCE_DIRS = [
    CHECKOUT / folder
    for folder in ("operator", "images/embed", "images/finetune", "images/serve", "images/common")
]
# What the images' ENV would provide; the container's own env overrides it.
IMAGE_ENV = {
    "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONPATH": os.pathsep.join(str(d) for d in SOURCE_DIRS if d.is_dir()),
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "PYTHONUNBUFFERED": "1",
}
TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_MAX = 2048
MAX_BACKOFF_SECONDS = 10.0
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


class ConfigError(Exception):
    """The container cannot be created yet (CreateContainerConfigError): a missing ConfigMap,
    Secret or key it references without `optional: true`."""


def image_name(image: str) -> str:
    """The repository basename: `registry:5000/org/phiops-embed:1.0@sha256:..` -> phiops-embed."""
    return image.split("@", 1)[0].rsplit("/", 1)[-1].split(":", 1)[0]


def runs_for_real(image: str) -> bool:
    return image_name(image) in PHIOPS_ENTRYPOINTS


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known names are replaced, `$$` is a literal `$`,
    unknown references and incomplete ones are kept as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "(" and (close := text.find(")", i + 2)) != -1:
            name = text[i + 2 : close]
            out.append(env.get(name, f"$({name})"))
            i = close + 1
        else:
            out.append("$" + nxt)
            i += 2
    return "".join(out)


def container_env(kube: Kube, pod: Obj, container: Obj, base: Mapping[str, str]) -> dict[str, str]:
    """The environment as the kubelet builds it: envFrom, then env (each expanded against what
    is defined so far), over `base` (image defaults, HOSTNAME, service variables)."""
    namespace = pod["metadata"]["namespace"]
    cache: dict[tuple[str, str], dict[str, str] | None] = {}

    def data(kind: str, name: str) -> dict[str, str] | None:
        if (kind, name) not in cache:
            obj = kube.get_or_none(f"/api/v1/namespaces/{q(namespace)}/{kind}/{q(name)}")
            if obj is None:
                cache[kind, name] = None
            else:
                raw = obj.get("data") or {}
                if kind == "secrets":
                    raw = {k: base64.b64decode(v).decode(errors="replace") for k, v in raw.items()}
                cache[kind, name] = dict(raw)
        return cache[kind, name]

    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        kind, ref = (
            ("configmaps", source["configMapRef"])
            if "configMapRef" in source
            else ("secrets", source.get("secretRef", {}))
        )
        values = data(kind, ref.get("name", ""))
        if values is None:
            if ref.get("optional"):
                continue
            raise ConfigError(f'{kind[:-1]} "{ref.get("name")}" not found')
        prefix = source.get("prefix", "")
        env.update({prefix + k: v for k, v in values.items() if _ENV_NAME.match(prefix + k)})

    for var in container.get("env") or []:
        name = var["name"]
        if "valueFrom" not in var:
            env[name] = expand(var.get("value", ""), {**base, **env})
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = _resource_value(pod, container, source["resourceFieldRef"])
        else:
            kind, ref = (
                ("configmaps", source["configMapKeyRef"])
                if "configMapKeyRef" in source
                else ("secrets", source["secretKeyRef"])
            )
            values = data(kind, ref["name"])
            if values is None or ref["key"] not in values:
                if ref.get("optional"):
                    continue
                what = f'{kind[:-1]} "{ref["name"]}"'
                raise ConfigError(
                    f"{what} not found" if values is None else f'{what} has no key "{ref["key"]}"'
                )
            env[name] = values[ref["key"]]
    return {**base, **env}


def _resource_value(pod: Obj, container: Obj, ref: Obj) -> str:
    """requests./limits.<resource> as a plain number (cpu rounded up to whole cores)."""
    target = container
    if ref.get("containerName"):
        target = next(c for c in pod["spec"]["containers"] if c["name"] == ref["containerName"])
    kind, _, resource = ref["resource"].partition(".")
    resources = target.get("resources", {})
    value = str((resources.get(kind) or resources.get("requests") or {}).get(resource, "0"))
    if resource == "cpu" and value.endswith("m"):
        return str(-(-int(value[:-1]) // 1000))
    return value


def container_argv(container: Obj, env: Mapping[str, str]) -> list[str]:
    """`command` (else the image's entrypoint `python -m <module>`), then `args`, expanded."""
    command = list(container.get("command") or [])
    if not command:
        module = PHIOPS_ENTRYPOINTS[image_name(container.get("image", ""))]
        command = ["python", "-m", module]
    return [expand(part, env) for part in command + list(container.get("args") or [])]


@dataclass
class Sandbox:
    """What a pod's containers share: the pod, its directory, network and volumes."""

    pod: Obj  # with status.podIP already filled in
    dir: Path
    state_dir: Path  # the runtime's own folder: the only place it may change on the host
    network: PodNetwork
    volumes: dict[str, HostVolume]
    base_env: dict[str, str]


class Probe:
    """A readiness or liveness probe: httpGet, tcpSocket or exec, with its thresholds."""

    def __init__(self, spec: Obj, container: Obj) -> None:
        self.spec = spec
        self.container = container
        self.initial_delay = float(spec.get("initialDelaySeconds", 0))
        self.period = float(spec.get("periodSeconds", 10))
        self.timeout = float(spec.get("timeoutSeconds", 1))
        self.success_threshold = int(spec.get("successThreshold", 1))
        self.failure_threshold = int(spec.get("failureThreshold", 3))
        self.next_at = 0.0
        self.successes = 0
        self.failures = 0

    def reset(self) -> None:
        self.next_at = time.monotonic() + self.initial_delay
        self.successes = self.failures = 0

    def due(self) -> bool:
        return time.monotonic() >= self.next_at

    def check(self, ip: str, pid: int | None, env: dict[str, str], cwd: str) -> bool:
        """Run the probe once and count the result."""
        self.next_at = time.monotonic() + self.period
        ok = self._run(ip, pid, env, cwd)
        if ok:
            self.successes, self.failures = self.successes + 1, 0
        else:
            self.successes, self.failures = 0, self.failures + 1
        return ok

    def _port(self, value: int | str) -> int:
        if isinstance(value, int) or str(value).isdigit():
            return int(value)
        for port in self.container.get("ports") or []:
            if port.get("name") == value:
                return int(port["containerPort"])
        raise ValueError(f"no container port named {value!r}")

    def _run(self, ip: str, pid: int | None, env: dict[str, str], cwd: str) -> bool:
        try:
            if "httpGet" in self.spec:
                get = self.spec["httpGet"]
                host, port = get.get("host") or ip, self._port(get["port"])
                conn: http.client.HTTPConnection
                if get.get("scheme", "HTTP").upper() == "HTTPS":
                    conn = http.client.HTTPSConnection(
                        host,
                        port,
                        timeout=self.timeout,
                        context=ssl._create_unverified_context(),  # as the kubelet: no verify
                    )
                else:
                    conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
                try:
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                    conn.request("GET", get.get("path", "/"), headers=headers)
                    return 200 <= conn.getresponse().status < 400
                finally:
                    conn.close()
            if "tcpSocket" in self.spec:
                tcp = self.spec["tcpSocket"]
                with socket.create_connection(
                    (tcp.get("host") or ip, self._port(tcp["port"])), timeout=self.timeout
                ):
                    return True
            if "exec" in self.spec and pid is not None:
                argv = [
                    "nsenter",
                    "--target",
                    str(pid),
                    "--net",
                    "--mount",
                    "--uts",
                    "--root",  # the container's root (a layered one, when it needed one)
                    f"--wdns={cwd}",
                    "--",
                    *self.spec["exec"]["command"],
                ]
                done = subprocess.run(
                    argv, env=env, capture_output=True, timeout=self.timeout, check=False
                )
                return done.returncode == 0
        except (OSError, subprocess.SubprocessError, ValueError, http.client.HTTPException):
            return False
        return False


class ContainerRun:
    """The lifecycle of one container (init or app) across its restarts."""

    def __init__(self, spec: Obj, *, init: bool, pod_dir: Path) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.image: str = spec.get("image", "")
        self.init = init
        self.real = runs_for_real(self.image)
        self.log_path = pod_dir / f"{self.name}.log"
        self.termination_path = pod_dir / "termination" / self.name
        self.spec_path = pod_dir / "specs" / f"{self.name}.json"
        self.layers_path = pod_dir / "layers" / self.name
        self.restart_count = 0
        self.state = "waiting"
        self.waiting_reason, self.waiting_message = "ContainerCreating", ""
        self.started_at = self.finished_at = ""
        self.exit_code = 0
        self.reason = ""
        self.message = ""
        self.last_state: Obj = {}
        self.ever_started = False
        self.proc: subprocess.Popen[bytes] | None = None
        self.container_pid: int | None = None
        self.not_before = 0.0
        self.backoff_streak = 0
        self.run_started = 0.0
        self.log_offset = 0
        self.ready = False
        self.env: dict[str, str] = {}
        self.readiness = Probe(spec["readinessProbe"], spec) if spec.get("readinessProbe") else None
        self.liveness = Probe(spec["livenessProbe"], spec) if spec.get("livenessProbe") else None

    # -- state ----------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def succeeded(self) -> bool:
        return self.state == "terminated" and self.exit_code == 0

    def adopt(self, status: Obj) -> None:
        """Continue from the status a previous runtime process reported (after a crash).

        Its processes were killed at start-up, so a container it reported running ends with
        exit code 137; a terminated one stays as it was.
        """
        self.restart_count = int(status.get("restartCount", 0))
        self.last_state = status.get("lastState") or {}
        state = status.get("state") or {}
        if not self.real and "running" in state:  # nothing was killed: it keeps running
            self.ever_started = True
            self.state = "running"
            self.started_at = state["running"].get("startedAt") or now_rfc3339()
            return
        previous = state.get("terminated") or (
            {
                "exitCode": 137,
                "reason": "Error",
                "startedAt": state["running"].get("startedAt"),
                "finishedAt": now_rfc3339(),
                "message": "killed: the node runtime restarted",
            }
            if "running" in state
            else None
        )
        if previous is None:
            return
        self.ever_started = True
        self.state = "terminated"
        self.exit_code = int(previous.get("exitCode", 0))
        self.reason = previous.get("reason", "Error" if self.exit_code else "Completed")
        self.message = previous.get("message") or ""
        self.started_at = previous.get("startedAt") or now_rfc3339()
        self.finished_at = previous.get("finishedAt") or now_rfc3339()

    def wants_restart(self, restart_policy: str) -> bool:
        if self.state != "terminated":
            return False
        if self.exit_code != 0:
            return restart_policy in ("Always", "OnFailure")
        return restart_policy == "Always" and not self.init

    def schedule_restart(self) -> None:
        """Keep the terminated run as lastState and wait out the back-off."""
        if time.monotonic() - self.run_started > 60:
            self.backoff_streak = 0
        delay = min(MAX_BACKOFF_SECONDS, 2.0**self.backoff_streak)
        self.backoff_streak += 1
        self.last_state = {"terminated": self._terminated()}
        self.state = "waiting"
        self.waiting_reason = "CrashLoopBackOff"
        self.waiting_message = f"back-off {delay:.0f}s restarting failed container={self.name}"
        self.not_before = time.monotonic() + delay

    # -- process --------------------------------------------------------------------------

    def start(self, kube: Kube, sandbox: Sandbox) -> None:
        """Start a run (or, for a simulated container, just mark it running / completed)."""
        if self.real:
            try:
                self.env = container_env(kube, sandbox.pod, self.spec, sandbox.base_env)
                argv = container_argv(self.spec, self.env)
                mounts = self._mounts(sandbox)
            except (ConfigError, ValueError, KeyError, StopIteration) as err:
                self.state = "waiting"
                self.waiting_reason, self.waiting_message = "CreateContainerConfigError", str(err)
                self.not_before = time.monotonic() + 2
                return
        if self.ever_started:
            self.restart_count += 1
        self.ever_started = True
        self.run_started = time.monotonic()
        self.started_at = now_rfc3339()
        self.ready = False
        if not self.real:
            self.state = "running"
            if self.init:  # a simulated init container completes at once
                self._terminate_with(0)
            return
        self.termination_path.parent.mkdir(parents=True, exist_ok=True)
        self.termination_path.write_bytes(b"")
        self.termination_path.chmod(0o666)
        self.layers_path.mkdir(parents=True, exist_ok=True)
        self.spec_path.parent.mkdir(parents=True, exist_ok=True)
        self.spec_path.write_text(
            json.dumps(
                {
                    "netns": sandbox.network.netns_path,
                    "hostname": sandbox.pod["metadata"]["name"],
                    "mounts": mounts,
                    "layers": str(self.layers_path),
                    "imagePaths": IMAGE_PATHS if self.real else [],
                    "workingDir": self.spec.get("workingDir") or "/",
                    "argv": argv,
                    "env": self.env,
                }
            )
        )
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "phiops_devcluster.node_runtime.shim", str(self.spec_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
            )
        self.container_pid = self.proc.pid
        self.state = "running"
        for probe in (self.readiness, self.liveness):
            if probe is not None:
                probe.reset()
        command = shlex.join(argv)
        log.info(
            "started %s (pid %d): %s",
            self.name,
            self.proc.pid,
            command if len(command) < 200 else command[:200] + "...",
        )

    def _mounts(self, sandbox: Sandbox) -> list[dict[str, Any]]:
        own = sandbox.state_dir.resolve()
        mounts: list[dict[str, Any]] = []
        for mount in self.spec.get("volumeMounts") or []:
            volume = sandbox.volumes.get(mount["name"])
            if volume is None:
                raise ConfigError(f"volume {mount['name']!r} is not defined in the pod")
            source = volume.path
            sub_path = mount.get("subPath") or expand(mount.get("subPathExpr", ""), self.env)
            if sub_path:
                source = source / sub_path
                if not source.exists():
                    source.mkdir(parents=True)
            mounts.append(
                {
                    "source": str(source),
                    "target": mount["mountPath"],
                    "readOnly": bool(mount.get("readOnly")) or volume.read_only,
                    # Mount points nested in it may be created there (not on other host paths).
                    "ownVolume": source.resolve().is_relative_to(own),
                }
            )
        mounts.append(
            {
                "source": str(self.termination_path),
                "target": self.spec.get("terminationMessagePath") or "/dev/termination-log",
                "readOnly": False,
            }
        )
        if sandbox.network.netns is not None:
            mounts.append(
                {"source": str(sandbox.dir / "etc-hosts"), "target": "/etc/hosts", "readOnly": True}
            )
            if Path("/etc/resolv.conf").exists():  # (a dangling link is not mounted over)
                mounts.append(
                    {
                        "source": str(sandbox.dir / "resolv.conf"),
                        "target": "/etc/resolv.conf",
                        "readOnly": True,
                    }
                )
        return sorted(mounts, key=lambda m: len(Path(m["target"]).parts))

    def poll(self) -> bool:
        """Whether the process exited since the last poll."""
        if self.proc is None or self.state != "running":
            return False
        code = self.proc.poll()
        if code is None:
            return False
        self.proc = None
        self._terminate_with(128 - code if code < 0 else code)
        log.info("%s exited with %d", self.name, self.exit_code)
        return True

    def _terminate_with(self, exit_code: int) -> None:
        self.state = "terminated"
        self.ready = False
        self.exit_code = exit_code
        self.reason = "Completed" if exit_code == 0 else "Error"
        self.finished_at = now_rfc3339()
        self.message = self._termination_message() if self.real else ""

    def _termination_message(self) -> str:
        message: bytes
        try:
            message = self.termination_path.read_bytes()[:TERMINATION_MESSAGE_MAX]
        except OSError:
            message = b""
        policy = self.spec.get("terminationMessagePolicy", "File")
        if not message and self.exit_code != 0 and policy == "FallbackToLogsOnError":
            try:
                with self.log_path.open("rb") as log_file:
                    log_file.seek(self.log_offset)
                    lines = log_file.read().splitlines()[-FALLBACK_LOG_LINES:]
                message = b"\n".join(lines)[-FALLBACK_LOG_MAX:]
            except OSError:
                pass
        return message.decode(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def stop(self, grace: float) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds, record the exit."""
        if self.proc is None:
            if self.state == "running":
                self._terminate_with(0)
            return
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.poll()

    # -- status ---------------------------------------------------------------------------

    def _terminated(self) -> Obj:
        terminated: Obj = {
            "exitCode": self.exit_code,
            "reason": self.reason,
            "startedAt": self.started_at,
            "finishedAt": self.finished_at,
        }
        if self.message:
            terminated["message"] = self.message
        if self.ever_started:
            terminated["containerID"] = self.container_id
        return terminated

    @property
    def container_id(self) -> str:
        if self.container_pid is not None:
            return f"phiops://{self.container_pid}"
        return f"phiops://simulated-{self.name}"

    def status(self) -> Obj:
        if self.state == "running":
            state: Obj = {"running": {"startedAt": self.started_at}}
        elif self.state == "terminated":
            state = {"terminated": self._terminated()}
        else:
            waiting: Obj = {"reason": self.waiting_reason}
            if self.waiting_message:
                waiting["message"] = self.waiting_message
            state = {"waiting": waiting}
        status: Obj = {
            "name": self.name,
            "image": self.image,
            "imageID": f"phiops-local://{self.image}",
            "ready": self.ready,
            "started": self.state == "running",
            "restartCount": self.restart_count,
            "state": state,
            "lastState": self.last_state,
        }
        if self.ever_started:
            status["containerID"] = self.container_id
        return status
