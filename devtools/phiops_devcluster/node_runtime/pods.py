"""One worker thread per pod bound to our nodes: sandbox, init containers, containers, probes,
status, deletion - what the kubelet's pod worker does, for local processes."""

from __future__ import annotations

import logging
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from phiops_devcluster.node_runtime import pod_dir
from phiops_devcluster.node_runtime.containers import IMAGE_ENV, ContainerRun, Sandbox
from phiops_devcluster.node_runtime.kube import ApiError, Kube, Obj, now_rfc3339, q
from phiops_devcluster.node_runtime.network import (
    HOST_NETWORK,
    PodNetwork,
    create_pod_network,
    delete_pod_network,
)
from phiops_devcluster.node_runtime.nodes import GPU_RESOURCE, NODES
from phiops_devcluster.node_runtime.services import HostsFiles, ServiceCatalog
from phiops_devcluster.node_runtime.volumes import (
    HostVolume,
    VolumeNotReady,
    materialise_volumes,
)

log = logging.getLogger("node-runtime.pods")

MAX_GRACE_SECONDS = 10.0
SHUTDOWN_GRACE_SECONDS = 3.0
TICK_SECONDS = 0.25
IDLE_TICK_SECONDS = 5.0
TERMINAL = ("Succeeded", "Failed")
# Bound at /etc/resolv.conf: cluster names are in /etc/hosts, and pods have no route to a DNS
# server (the host does not forward), so other names should fail at once, not time out.
RESOLV_CONF = (
    "# phiops local node runtime: Service names are in /etc/hosts; there is no DNS server.\n"
    "nameserver 127.0.0.1\n"
    "options timeout:1 attempts:1\n"
)


class GpuAllocator:
    """Hands out GPU indexes of a node to pods (exposed as NVIDIA_VISIBLE_DEVICES)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[tuple[str, int], str] = {}
        self._capacity = {spec.name: spec.gpu_count() for spec in NODES}

    def allocate(self, node: str, uid: str, count: int) -> list[int]:
        with self._lock:
            free = [i for i in range(self._capacity.get(node, 0)) if (node, i) not in self._owners]
            taken = free[:count]
            for index in taken:
                self._owners[node, index] = uid
            return taken

    def release(self, uid: str) -> None:
        with self._lock:
            for key in [k for k, owner in self._owners.items() if owner == uid]:
                del self._owners[key]


@dataclass
class RuntimeContext:
    """What the pod workers share."""

    kube: Kube
    state_dir: Path
    stopping: threading.Event
    service_env: dict[str, str]  # KUBERNETES_SERVICE_HOST and friends
    forget: Callable[[str], None]  # called by a worker whose pod is gone
    services: ServiceCatalog  # the cluster's Services (other service variables)
    hosts: HostsFiles  # the pods' /etc/hosts files, kept current
    gpus: GpuAllocator = field(default_factory=GpuAllocator)


class PodWorker:
    def __init__(self, ctx: RuntimeContext, pod: Obj) -> None:
        meta = pod["metadata"]
        self.ctx = ctx
        self.pod = pod
        self.uid: str = meta["uid"]
        self.namespace: str = meta["namespace"]
        self.name: str = meta["name"]
        self.node: str = pod["spec"]["nodeName"]
        self.dir = pod_dir(ctx.state_dir, self.namespace, self.name, self.uid)
        self.restart_policy: str = pod["spec"].get("restartPolicy", "Always")
        self.inits = [
            ContainerRun(c, init=True, pod_dir=self.dir)
            for c in pod["spec"].get("initContainers") or []
        ]
        self.apps = [
            ContainerRun(c, init=False, pod_dir=self.dir) for c in pod["spec"]["containers"]
        ]
        for run in self.apps if self.inits else []:
            run.waiting_reason = "PodInitializing"
        self.network: PodNetwork | None = None
        self.volumes: dict[str, HostVolume] | None = None
        self.gpus: list[int] = []
        self.deleted = False
        self.wake = threading.Event()
        self.thread = threading.Thread(
            target=self._run, name=f"pod {self.namespace}/{self.name}", daemon=True
        )

        status = pod.get("status") or {}
        self.phase: str = status.get("phase") or "Pending"
        self.start_time: str = status.get("startTime") or ""
        self.pod_ip: str = status.get("podIP") or ""
        self.transitions: dict[str, tuple[str, str]] = {
            c["type"]: (c["status"], c.get("lastTransitionTime") or now_rfc3339())
            for c in status.get("conditions") or []
        }
        self.published: Obj | None = None
        # The apiserver's copy of the status, from the watch or our last patch: another writer
        # (the node lifecycle controller marks pods NotReady after an outage) shows up here.
        self.seen: Obj = status
        if self.phase not in TERMINAL:
            self._adopt(status)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def start(self) -> None:
        self.thread.start()

    def update(self, pod: Obj) -> None:
        self.pod = pod
        self.seen = pod.get("status") or {}
        self.wake.set()

    def mark_deleted(self) -> None:
        self.deleted = True
        self.wake.set()

    def _adopt(self, status: Obj) -> None:
        """A previous runtime process ran this pod (and its processes were killed since)."""
        for runs, key in ((self.inits, "initContainerStatuses"), (self.apps, "containerStatuses")):
            previous = {s["name"]: s for s in status.get(key) or []}
            for run in runs:
                if run.name in previous:
                    run.adopt(previous[run.name])

    # -- loop -----------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            delay = self._tick()
            try:
                if self.ctx.stopping.is_set():
                    self._stop_containers(SHUTDOWN_GRACE_SECONDS)
                    self._release(remove_files=False)
                    return
                if self.deleted or self.pod["metadata"].get("deletionTimestamp"):
                    self._delete()
                    return
                if not self.terminal:
                    self._sync()
            except Exception:
                log.exception("pod %s/%s: sync failed", self.namespace, self.name)
                delay = 2.0
            self.wake.wait(delay)
            self.wake.clear()

    def _tick(self) -> float | None:
        """How long to sleep unless woken: poll often only while processes may change."""
        if self.terminal:
            return None
        if any(r.real and r.state != "terminated" for r in self.inits + self.apps):
            return TICK_SECONDS
        return IDLE_TICK_SECONDS

    def _sync(self) -> None:
        if self.network is None:
            self._create_sandbox()
        if self.volumes is None:
            try:
                self.volumes = materialise_volumes(self.ctx.kube, self.pod, self.dir / "volumes")
            except VolumeNotReady as err:
                for run in self.inits + self.apps:
                    run.waiting_message = str(err)
                self._publish()
                self.wake.wait(1.0)
                return
            for run in self.inits + self.apps:
                run.waiting_message = ""
        sandbox = self._sandbox()

        initialized = True
        for run in self.inits:
            if not run.succeeded:
                self._drive(run, sandbox)
            if not run.succeeded:
                initialized = False
                break
        if initialized:
            for run in self.apps:
                self._drive(run, sandbox)
                self._probe(run, sandbox)
        self.phase = self._phase(initialized)
        self._publish(initialized)
        if self.terminal:
            log.info("pod %s/%s %s", self.namespace, self.name, self.phase)
            self._release(remove_files=False)

    def _create_sandbox(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.pod["spec"].get("hostNetwork"):
            self.network = HOST_NETWORK
        else:
            self.network = create_pod_network(self.uid, self.ctx.state_dir)
        self.pod_ip = self.network.ip
        hostname = self.pod["spec"].get("hostname") or self.name
        head = (
            "# Kubernetes-managed hosts file (phiops local node runtime).\n"
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
            f"{self.pod_ip}\t{hostname}\n"
        )
        aliases = self.pod["spec"].get("hostAliases") or []
        if aliases:
            head += "# Entries added by HostAliases.\n" + "".join(
                f"{a['ip']}\t{' '.join(a.get('hostnames') or [])}\n" for a in aliases
            )
        self.ctx.hosts.add(self.uid, self.dir / "etc-hosts", self.namespace, head)
        (self.dir / "resolv.conf").write_text(RESOLV_CONF)
        self.start_time = self.start_time or now_rfc3339()
        wanted = sum(
            int((c.get("resources", {}).get("limits") or {}).get(GPU_RESOURCE, 0))
            for c in self.pod["spec"]["containers"]
        )
        if wanted:
            self.gpus = self.ctx.gpus.allocate(self.node, self.uid, wanted)
        log.info("pod %s/%s: sandbox ready, IP %s", self.namespace, self.name, self.pod_ip)

    def _sandbox(self) -> Sandbox:
        assert self.network is not None and self.volumes is not None
        pod = {
            **self.pod,
            "status": {
                **(self.pod.get("status") or {}),
                "podIP": self.pod_ip,
                "podIPs": [{"ip": self.pod_ip}],
                "hostIP": "127.0.0.1",
            },
        }
        links = self.pod["spec"].get("enableServiceLinks", True) is not False
        env = {
            **IMAGE_ENV,
            **self.ctx.services.env(self.namespace, links),
            **self.ctx.service_env,
            "HOSTNAME": self.name,
        }
        if self.gpus:
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(map(str, self.gpus))
        return Sandbox(
            pod=pod,
            dir=self.dir,
            state_dir=self.ctx.state_dir,
            network=self.network,
            volumes=self.volumes,
            base_env=env,
        )

    def _drive(self, run: ContainerRun, sandbox: Sandbox) -> None:
        """Advance one container: notice its exit, plan its restart, (re)start it."""
        if run.state == "running":
            run.poll()
        if run.wants_restart(self.restart_policy):
            run.schedule_restart()
        if run.state == "waiting" and time.monotonic() >= run.not_before:
            run.start(self.ctx.kube, sandbox)
            if run.init and run.state == "running":
                run.poll()

    def _probe(self, run: ContainerRun, sandbox: Sandbox) -> None:
        if run.state != "running":
            run.ready = False
            return
        if not run.real or run.readiness is None:
            run.ready = True
        elif run.readiness.due():
            run.readiness.check(self.pod_ip, run.pid, run.env, run.spec.get("workingDir") or "/")
            if run.readiness.successes >= run.readiness.success_threshold:
                run.ready = True
            elif run.readiness.failures >= run.readiness.failure_threshold:
                run.ready = False
        liveness = run.liveness
        if run.real and liveness is not None and liveness.due():
            liveness.check(self.pod_ip, run.pid, run.env, run.spec.get("workingDir") or "/")
            if liveness.failures >= liveness.failure_threshold:
                log.info(
                    "pod %s/%s: %s failed its liveness probe; killing it",
                    self.namespace,
                    self.name,
                    run.name,
                )
                run.stop(self._grace())

    def _phase(self, initialized: bool) -> str:
        """The kubelet's getPhase."""
        if any(
            r.state == "terminated" and not r.succeeded and not r.wants_restart(self.restart_policy)
            for r in self.inits
        ):
            return "Failed"
        if not initialized:
            return "Pending"
        running = waiting = stopped = succeeded = 0
        for run in self.apps:
            if run.state == "running":
                running += 1
            elif run.state == "terminated":
                stopped += 1
                succeeded += run.succeeded
            elif run.last_state:
                stopped += 1
            else:
                waiting += 1
        if waiting:
            return "Pending"
        if running:
            return "Running"
        if self.restart_policy == "Always":
            return "Running"
        if stopped == succeeded:
            return "Succeeded"
        if self.restart_policy == "Never":
            return "Failed"
        return "Running"

    # -- status ---------------------------------------------------------------------------

    def _condition(self, kind: str, ok: bool, reason: str = "", message: str = "") -> Obj:
        status = "True" if ok else "False"
        previous = self.transitions.get(kind)
        if previous is None or previous[0] != status:
            self.transitions[kind] = (status, now_rfc3339())
        condition: Obj = {
            "type": kind,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self.transitions[kind][1],
        }
        if reason and not ok:
            condition["reason"] = reason
        if message and not ok:
            condition["message"] = message
        return condition

    def _publish(self, initialized: bool = False) -> None:
        if self.terminal:
            ready = False
            ready_reason, ready_message = "PodCompleted", ""
        else:
            unready = [r.name for r in self.apps if not r.ready]
            ready = not unready
            ready_reason = "ContainersNotReady"
            ready_message = f"containers with unready status: [{' '.join(unready)}]"
        pending_init = [r.name for r in self.inits if not r.succeeded]
        status: Obj = {
            "phase": self.phase,
            "conditions": [
                self._condition(
                    "Initialized",
                    initialized or (self.terminal and not pending_init),
                    "ContainersNotInitialized",
                    f"containers with incomplete status: [{' '.join(pending_init)}]",
                ),
                self._condition("Ready", ready, ready_reason, ready_message),
                self._condition("ContainersReady", ready, ready_reason, ready_message),
                self._condition("PodScheduled", True),
            ],
            "hostIP": "127.0.0.1",
            "podIP": self.pod_ip or None,
            "podIPs": [{"ip": self.pod_ip}] if self.pod_ip else None,
            "startTime": self.start_time or None,
            "initContainerStatuses": [r.status() for r in self.inits] or None,
            "containerStatuses": [r.status() for r in self.apps],
        }
        # As the kubelet's status manager: unchanged and still what the apiserver holds.
        if status == self.published and agrees(status, self.seen):
            return
        if self.published is not None and status == self.published:
            log.info(
                "pod %s/%s: the apiserver holds another status; re-sending ours",
                self.namespace,
                self.name,
            )
        try:
            updated = self.ctx.kube.patch(
                f"/api/v1/namespaces/{q(self.namespace)}/pods/{q(self.name)}/status",
                {"metadata": {"uid": self.uid}, "status": status},
            )
            self.published = status
            self.seen = updated.get("status") or {}
        except ApiError as err:
            if err.status == 404:
                self.deleted = True
            else:
                raise

    # -- stopping -------------------------------------------------------------------------

    def _grace(self) -> float:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = spec.get("terminationGracePeriodSeconds", 30)
        return min(float(grace), MAX_GRACE_SECONDS)

    def _stop_containers(self, grace: float) -> None:
        running = [r for r in self.inits + self.apps if r.proc is not None]
        for run in running:
            run.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for run in running:
            run.stop(max(0.0, deadline - time.monotonic()))

    def _release(self, remove_files: bool) -> None:
        self.ctx.hosts.remove(self.uid)
        if self.network is not None and self.network.netns is not None:
            delete_pod_network(self.network)
        self.network = None
        self.ctx.gpus.release(self.uid)
        if remove_files:
            for sub in ("volumes", "termination", "specs", "layers"):
                shutil.rmtree(self.dir / sub, ignore_errors=True)
            for name in ("etc-hosts", "resolv.conf"):
                (self.dir / name).unlink(missing_ok=True)

    def _delete(self) -> None:
        grace = self._grace() if not self.deleted else min(self._grace(), 2.0)
        log.info("pod %s/%s: stopping (grace %.0fs)", self.namespace, self.name, grace)
        self._stop_containers(grace)
        self._release(remove_files=True)
        if not self.deleted:
            self.ctx.kube.delete(
                f"/api/v1/namespaces/{q(self.namespace)}/pods/{q(self.name)}",
                {
                    "apiVersion": "v1",
                    "kind": "DeleteOptions",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": self.uid},
                },
            )
        log.info("pod %s/%s: deleted", self.namespace, self.name)
        self.ctx.forget(self.uid)


def agrees(ours: Obj, server: Obj) -> bool:
    """Whether the apiserver's pod status says what ours says: phase, pod IP and the statuses of
    the conditions we publish (other writers' condition types are theirs)."""
    theirs = {c["type"]: c["status"] for c in server.get("conditions") or []}
    return (
        ours.get("phase") == server.get("phase")
        and ours.get("podIP") == server.get("podIP")
        and all(theirs.get(c["type"]) == c["status"] for c in ours.get("conditions") or [])
    )
