"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, controller-manager, scheduler.

Binaries come from `hack/build-control-plane.sh` (built once, cached outside the checkout).
Everything listens on 127.0.0.1 only. State (PKI, etcd data, logs, PID files) lives in one
directory, so a test cluster and a developer's cluster can run side by side on other ports.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from phiops_devcluster.pki import ensure_pki
from phiops_devcluster.processes import ManagedProcess

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-control-plane.sh"
DEFAULT_SERVICE_CIDR = "10.0.0.0/24"
POD_NETWORK = ipaddress.ip_network("10.244.0.0/16")  # the node runtime's (network.py)


def log(message: str) -> None:
    print(f"[cluster] {message}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class PlaneConfig:
    state_dir: Path
    kubeconfig: Path
    api_port: int = 6443
    etcd_port: int = 23790
    with_nodes: bool = True
    # ClusterIPs come from here. Clusters that run side by side on one host need distinct
    # ranges (their ClusterIPs are host addresses); inside 10.0.0.0/8, outside the pod
    # network 10.244.0.0/16. Changing it for an existing cluster needs `down --wipe`.
    service_cidr: str = DEFAULT_SERVICE_CIDR

    def __post_init__(self) -> None:
        network = ipaddress.ip_network(self.service_cidr)  # ValueError when malformed
        if network.version != 4 or network.overlaps(POD_NETWORK) or network.num_addresses < 4:
            raise ValueError(
                f"service CIDR {self.service_cidr}: want an IPv4 range outside the pod network "
                f"{POD_NETWORK} (e.g. 10.0.0.0/24)"
            )

    @property
    def kubernetes_service_ip(self) -> str:
        """The first address of the service range: the `kubernetes` Service's ClusterIP."""
        return str(ipaddress.ip_network(self.service_cidr)[1])

    @property
    def etcd_peer_port(self) -> int:
        return self.etcd_port + 1

    @property
    def pki(self) -> Path:
        return self.state_dir / "pki"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.api_port}"


def control_plane_binaries() -> Path:
    """Path of the cached binaries, building them first when the cache is empty."""
    out = subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


class ControlPlane:
    def __init__(self, config: PlaneConfig) -> None:
        self.config = config
        state = config.state_dir
        # Order matters: started in this order, stopped in reverse.
        self.etcd = ManagedProcess("etcd", state, marker=str(state / "etcd-data"))
        self.apiserver = ManagedProcess("kube-apiserver", state, marker=str(state / "pki"))
        self.controller_manager = ManagedProcess(
            "kube-controller-manager", state, marker=str(state / "controller-manager.kubeconfig")
        )
        self.scheduler = ManagedProcess(
            "kube-scheduler", state, marker=str(state / "scheduler.kubeconfig")
        )
        self.node_runtime = ManagedProcess(
            "node-runtime", state, marker=f"phiops_devcluster.node_runtime --state-dir {state}"
        )

    @property
    def processes(self) -> list[ManagedProcess]:
        return [
            self.etcd,
            self.apiserver,
            self.controller_manager,
            self.scheduler,
            self.node_runtime,
        ]

    # -- up ---------------------------------------------------------------------------------

    def up(self) -> None:
        started = time.monotonic()
        cfg = self.config
        bins = control_plane_binaries()
        ensure_pki(cfg.pki, service_ip=cfg.kubernetes_service_ip)
        self._write_kubeconfigs()

        if not self.etcd.running():
            log("starting etcd")
            self.etcd.start(self._etcd_argv(bins))
        self._wait("etcd", self._etcd_healthy, 30)

        if not self.apiserver.running():
            log("starting kube-apiserver")
            self.apiserver.start(self._apiserver_argv(bins))
        self._wait("kube-apiserver /readyz", self._apiserver_ready, 60)

        if not self.controller_manager.running():
            log("starting kube-controller-manager")
            self.controller_manager.start(self._controller_manager_argv(bins))
        if not self.scheduler.running():
            log("starting kube-scheduler")
            self.scheduler.start(self._scheduler_argv(bins))
        if cfg.with_nodes and not self.node_runtime.running():
            log("starting the local node runtime (phiops-cpu-0, phiops-gpu-0)")
            self.node_runtime.start(self._node_runtime_argv(), env=_with_devtools_on_path())

        self._wait("default ServiceAccount", self._default_service_account_exists, 60)
        if cfg.with_nodes:
            self._wait("nodes Ready", self._nodes_ready, 60)
        log(f"control plane ready in {time.monotonic() - started:.1f}s")

    def _wait(self, what: str, check: object, timeout: float) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for proc in self.processes:
                if proc.pid_file.exists() and not proc.running():
                    tail = _tail(proc.log_file)
                    raise RuntimeError(f"{proc.name} exited while waiting for {what}:\n{tail}")
            time.sleep(0.25)
        raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")

    # -- down -------------------------------------------------------------------------------

    def down(self, wipe: bool = False) -> None:
        for proc in reversed(self.processes):
            if proc.stop():
                log(f"stopped {proc.name}")
        if wipe:
            # Leftover pod network namespaces are owned by the node runtime's state.
            shutil.rmtree(self.config.state_dir, ignore_errors=True)
            self.config.kubeconfig.unlink(missing_ok=True)
            log(f"removed {self.config.state_dir}")

    def stop_apiserver(self) -> None:
        """An apiserver outage (tests): everything else keeps running."""
        self.apiserver.stop()

    def start_apiserver(self) -> None:
        if not self.apiserver.running():
            self.apiserver.start(self._apiserver_argv(control_plane_binaries()))
        self._wait("kube-apiserver /readyz", self._apiserver_ready, 60)

    def status(self) -> dict[str, int | None]:
        return {proc.name: proc.pid() for proc in self.processes}

    # -- argv -------------------------------------------------------------------------------

    def _etcd_argv(self, bins: Path) -> list[str]:
        cfg = self.config
        client = f"http://127.0.0.1:{cfg.etcd_port}"
        peer = f"http://127.0.0.1:{cfg.etcd_peer_port}"
        return [
            str(bins / "etcd"),
            "--name",
            "phiops",
            "--data-dir",
            str(cfg.state_dir / "etcd-data"),
            "--listen-client-urls",
            client,
            "--advertise-client-urls",
            client,
            "--listen-peer-urls",
            peer,
            "--initial-advertise-peer-urls",
            peer,
            "--initial-cluster",
            f"phiops={peer}",
            "--unsafe-no-fsync",
            "--log-level",
            "warn",
        ]

    def _apiserver_argv(self, bins: Path) -> list[str]:
        cfg, pki = self.config, self.config.pki
        return [
            str(bins / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{cfg.etcd_port}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={cfg.api_port}",
            "--insecure-port=0",
            f"--client-ca-file={pki / 'ca.crt'}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=RBAC",
            f"--service-cluster-ip-range={cfg.service_cidr}",
            # Loopback endpoints for the `kubernetes` Service are refused by validation.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
        ]

    def _controller_manager_argv(self, bins: Path) -> list[str]:
        pki = self.config.pki
        return [
            str(bins / "kube-controller-manager"),
            f"--kubeconfig={self.config.state_dir / 'controller-manager.kubeconfig'}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            f"--service-cluster-ip-range={self.config.service_cidr}",
            # Pods on a node that stops heart-beating are evicted quickly, as tests expect.
            "--node-monitor-grace-period=20s",
            "--v=1",
        ]

    def _scheduler_argv(self, bins: Path) -> list[str]:
        return [
            str(bins / "kube-scheduler"),
            f"--kubeconfig={self.config.state_dir / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--port=0",
            "--secure-port=0",
            "--v=1",
        ]

    def _node_runtime_argv(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "phiops_devcluster.node_runtime",
            "--state-dir",
            str(self.config.state_dir),
            "--kubeconfig",
            str(self.config.kubeconfig),
            "--service-cidr",
            self.config.service_cidr,
        ]

    # -- kubeconfigs and checks -------------------------------------------------------------

    def _write_kubeconfigs(self) -> None:
        cfg = self.config
        cfg.kubeconfig.parent.mkdir(parents=True, exist_ok=True)
        for name, path in (
            ("admin", cfg.kubeconfig),
            ("controller-manager", cfg.state_dir / "controller-manager.kubeconfig"),
            ("scheduler", cfg.state_dir / "scheduler.kubeconfig"),
        ):
            path.write_text(yaml.safe_dump(self._kubeconfig(name)))
            path.chmod(0o600)

    def _kubeconfig(self, user: str) -> dict[str, object]:
        pki = self.config.pki
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "phiops-local",
                    "cluster": {
                        "server": self.config.server,
                        "certificate-authority": str(pki / "ca.crt"),
                    },
                }
            ],
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(pki / f"{user}.crt"),
                        "client-key": str(pki / f"{user}.key"),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "phiops-local",
                    "context": {"cluster": "phiops-local", "user": user, "namespace": "default"},
                }
            ],
            "current-context": "phiops-local",
        }

    def _etcd_healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.config.etcd_port}/health", timeout=1
            ) as resp:
                return b'"health":"true"' in resp.read()
        except OSError:
            return False

    def _admin_get(self, path: str) -> tuple[int, bytes]:
        pki = self.config.pki
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        try:
            with urllib.request.urlopen(self.config.server + path, context=ctx, timeout=2) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as err:
            return err.code, b""
        except OSError:
            return 0, b""

    def _apiserver_ready(self) -> bool:
        return self._admin_get("/readyz")[0] == 200

    def _default_service_account_exists(self) -> bool:
        return self._admin_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    def _nodes_ready(self) -> bool:
        import json

        status, body = self._admin_get("/api/v1/nodes")
        if status != 200:
            return False
        nodes = json.loads(body)["items"]
        ready = [
            n
            for n in nodes
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        ]
        return len(nodes) >= 2 and len(ready) == len(nodes)


def _with_devtools_on_path() -> dict[str, str]:
    """The dev tooling is not installed as a package (it never ships): put it on the path."""
    env = dict(os.environ)
    devtools = str(REPO_ROOT / "devtools")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (devtools, env.get("PYTHONPATH")) if p)
    return env


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def default_config() -> PlaneConfig:
    dev = Path(os.environ.get("PHIOPS_DEV_DIR", REPO_ROOT / ".dev"))
    return PlaneConfig(
        state_dir=dev / "cluster",
        kubeconfig=dev / "kubeconfig",
        api_port=int(os.environ.get("PHIOPS_API_PORT", "6443")),
        etcd_port=int(os.environ.get("PHIOPS_ETCD_PORT", "23790")),
        service_cidr=os.environ.get("PHIOPS_SERVICE_CIDR", DEFAULT_SERVICE_CIDR),
    )
