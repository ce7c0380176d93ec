"""The operator at scale: N resources created at R per second on a real control plane.

`python benchmarks/bench_operator.py --count 1000 --rate 50` starts a local control plane
(etcd, kube-apiserver, controller-manager, scheduler; no nodes, so no workload pod ever
runs), the operator as its own process (`python -m phiops_operator -A`, as its pod runs it),
and creates KnowledgeBases, FineTuneJobs and PhiDeployments in turn, whose children are cheap:
- PhiDeployments with zero replicas (ConfigMap, Deployment, Service; no pod);
- KnowledgeBases against an "external Milvus" that is a TCP listener of this process (it
  accepts, so the operator starts the sync: ConfigMaps and a Job whose pod stays Pending);
- LoRA FineTuneJobs on CPU (ServiceAccount, Role, RoleBinding, ConfigMaps, output claim,
  pre-flight Job whose pod stays Pending).
Printed: create -> first child seen and create -> first status seen (p50/p99, by the
benchmark's own watches), API requests per second to the API server while busy and idle
(`apiserver_request_total`, every client; the idle rate of the same plane with the operator
running and no resources is subtracted), the operator's own requests (its
`phiops_api_requests_total`, with the client-side rate limiter's waits), and the operator's
RSS growth and CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "devtools"))

NAMESPACE = "bench"
KINDS = ("phideployments", "knowledgebases", "finetunejobs")
# The child each kind makes first that shows it was reconciled: (label name, child kind).
FIRST_CHILD = {
    "phideployment": "Deployment",
    "knowledgebase": "Job",
    "finetunejob": "Job",
}
AIMS = {"children p99": 1.0, "status p99": 2.0, "idle per resource": 0.05, "rss": 30.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def manifest(plural: str, name: str, milvus: str) -> dict[str, Any]:
    base = {"apiVersion": "phiops.dev/v1alpha1", "metadata": {"name": name}}
    if plural == "phideployments":
        spec: dict[str, Any] = {"model": {"name": "microsoft/Phi-3-mini-4k-instruct"}}
        spec["replicas"] = 0
        return {**base, "kind": "PhiDeployment", "spec": spec}
    if plural == "knowledgebases":
        spec = {
            "sources": [{"name": "docs", "configMap": {"name": "bench-docs"}}],
            "vectorStore": {"milvus": {"uri": milvus}},
        }
        return {**base, "kind": "KnowledgeBase", "spec": spec}
    spec = {
        "baseModel": {"name": "microsoft/Phi-3-mini-4k-instruct"},
        "dataset": {"configMap": {"name": "bench-dataset", "key": "train.jsonl"}},
        "method": "lora",
        "resources": {"gpus": 0},
    }
    return {**base, "kind": "FineTuneJob", "spec": spec}


INPUTS = [
    {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "bench-docs"},
        "data": {"a.md": "# A\nSome text.\n"},
    },
    {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "bench-dataset"},
        "data": {
            "train.jsonl": '{"messages": [{"role": "user", "content": "hi"}, '
            '{"role": "assistant", "content": "hello"}]}\n'
        },
    },
]


@dataclass
class Seen:
    created: dict[str, float] = field(default_factory=dict)
    child: dict[str, float] = field(default_factory=dict)
    status: dict[str, float] = field(default_factory=dict)


class Process:
    """CPU seconds and RSS of one process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def by_label(text: str, name: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                key = tuple(sample.labels.get(label, "") for label in labels)
                found[key] = found.get(key, 0.0) + sample.value
    return found


def scrape(text: str, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                total += sample.value
    return total


class Counters:
    def __init__(self, kubeconfig: Path, operator_metrics: str) -> None:
        self.kubeconfig, self.operator_metrics = kubeconfig, operator_metrics

    def reconciles(self) -> dict[str, tuple[float, float]]:
        """(count, seconds) of the operator's reconciles so far, by kind."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.operator_metrics) as response:
            text = response.read().decode()
        found: dict[str, list[float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                name = sample.name.removeprefix("phiops_reconcile_duration_seconds_")
                if name in ("count", "sum") and sample.name != name:
                    slot = found.setdefault(sample.labels["kind"], [0.0, 0.0])
                    slot[0 if name == "count" else 1] += sample.value
        return {kind: (count, seconds) for kind, (count, seconds) in found.items()}

    def apiserver_metrics(self) -> str:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "get", "--raw", "/metrics"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def breakdown(self) -> dict[str, dict[tuple[str, ...], float]]:
        """The API server's requests by (verb, resource) and latency sums by verb."""
        raw = self.apiserver_metrics()
        return {
            "requests": by_label(raw, "apiserver_request_total", ("verb", "resource")),
            "seconds": by_label(raw, "apiserver_request_duration_seconds_sum", ("verb",)),
            "count": by_label(raw, "apiserver_request_duration_seconds_count", ("verb",)),
        }

    def read(self) -> tuple[float, float, float, float]:
        """(API server requests, operator requests, operator throttled seconds, time)."""
        raw = self.apiserver_metrics()
        with urllib.request.urlopen(self.operator_metrics) as response:
            ours = response.read().decode()
        return (
            scrape(raw, "apiserver_request_total"),
            scrape(ours, "phiops_api_requests_total"),
            scrape(ours, "phiops_api_client_throttled_seconds_total"),
            time.monotonic(),
        )


def show_breakdown(
    label: str, before: dict[str, dict[tuple[str, ...], float]], after: dict[str, Any]
) -> None:
    """The busiest (verb, resource) pairs between two breakdowns, and latency by verb."""
    delta = {
        key: after["requests"][key] - before["requests"].get(key, 0.0) for key in after["requests"]
    }
    top = sorted(((n, k) for k, n in delta.items() if n > 0), reverse=True)[:8]
    print(
        f"  {label}: "
        + ", ".join(f"{verb} {resource or '-'} {n:.0f}" for n, (verb, resource) in top)
    )
    latency = []
    for (verb,), seconds in after["seconds"].items():
        count = after["count"][(verb,)] - before["count"].get((verb,), 0.0)
        if count > 0 and verb not in ("WATCH", "CONNECT"):
            spent = seconds - before["seconds"].get((verb,), 0.0)
            latency.append(f"{verb} {1000 * spent / count:.0f} ms")
    if latency:
        print(f"  API server mean latency: {', '.join(latency)}")


def rate(before: tuple[float, ...], after: tuple[float, ...], index: int) -> float:
    return (after[index] - before[index]) / (after[3] - before[3])


async def fake_milvus() -> tuple[asyncio.AbstractServer, str]:
    """Accepts connections (the operator's reachability check), says nothing."""

    async def close(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


async def watch_all(api: Any, seen: Seen, stop: asyncio.Event) -> None:
    from kubernetes_asyncio import client, watch

    custom, apps, batch = (
        client.CustomObjectsApi(api),
        client.AppsV1Api(api),
        client.BatchV1Api(api),
    )

    async def resources(plural: str) -> None:
        while True:  # a watch the loaded API server ends is opened again (listing first)
            with contextlib.suppress(Exception):
                async with watch.Watch().stream(
                    custom.list_namespaced_custom_object,
                    "phiops.dev",
                    "v1alpha1",
                    NAMESPACE,
                    plural,
                    timeout_seconds=300,
                ) as stream:
                    async for event in stream:
                        obj = event["object"]
                        name = f"{plural}/{obj['metadata']['name']}"
                        if (obj.get("status") or {}).get("conditions"):
                            seen.status.setdefault(name, time.monotonic())
            await asyncio.sleep(0.2)

    async def children(lister: Any, kind: str) -> None:
        selector = "app.kubernetes.io/managed-by=phiops-operator"
        while True:
            with contextlib.suppress(Exception):
                async with watch.Watch().stream(
                    lister, NAMESPACE, label_selector=selector, timeout_seconds=300
                ) as stream:
                    async for event in stream:
                        labels = event["object"].metadata.labels or {}
                        owner = labels.get("app.kubernetes.io/name", "")
                        if FIRST_CHILD.get(owner) != kind:
                            continue
                        instance = labels.get("app.kubernetes.io/instance")
                        seen.child.setdefault(f"{owner_plural(owner)}/{instance}", time.monotonic())
            await asyncio.sleep(0.2)

    tasks = [asyncio.create_task(resources(p)) for p in KINDS]
    tasks.append(asyncio.create_task(children(apps.list_namespaced_deployment, "Deployment")))
    tasks.append(asyncio.create_task(children(batch.list_namespaced_job, "Job")))
    await stop.wait()
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def core_api(api: Any) -> Any:
    from kubernetes_asyncio import client

    return client.CoreV1Api(api)


async def events_by_source(core: Any) -> str:
    """Who posted the namespace's Events, and why (reason), busiest first."""
    found: dict[tuple[str, str], int] = {}
    for event in (await core.list_namespaced_event(NAMESPACE)).items:
        source = event.reporting_component or (event.source and event.source.component) or "?"
        key = (source, event.reason or "?")
        found[key] = found.get(key, 0) + 1
    ranked = sorted(found.items(), key=lambda item: -item[1])
    return ", ".join(f"{source} {reason} {n}" for (source, reason), n in ranked) or "none"


def owner_plural(label: str) -> str:
    return {"phideployment": "phideployments", "knowledgebase": "knowledgebases"}.get(
        label, "finetunejobs"
    )


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def create_all(api: Any, count: int, per_second: float, milvus: str, seen: Seen) -> None:
    from kubernetes_asyncio import client

    custom = client.CustomObjectsApi(api)
    started = time.monotonic()
    pending: list[asyncio.Task[Any]] = []

    async def one(i: int) -> None:
        plural = KINDS[i % len(KINDS)]
        name = f"r{i:05d}"
        seen.created[f"{plural}/{name}"] = time.monotonic()
        body = manifest(plural, name, milvus)
        await custom.create_namespaced_custom_object(
            "phiops.dev", "v1alpha1", NAMESPACE, plural, body
        )

    for i in range(count):
        delay = started + i / per_second - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(one(i)))
    await asyncio.gather(*pending)


@dataclass
class Setup:
    kubeconfig: str
    counters: Counters
    operator: Process
    plane: dict[str, Process]

    def plane_cpu(self) -> dict[str, float]:
        return {name: proc.cpu() for name, proc in self.plane.items()}


def start(args: argparse.Namespace, work: Path, plane: Any, stack: contextlib.ExitStack) -> Setup:
    """The plane, the CRDs, the namespace and its inputs, the operator (stopped on exit)."""
    plane.up()
    kubeconfig = str(plane.config.kubeconfig)
    kubectl = ["kubectl", "--kubeconfig", kubeconfig]

    def run(*argv: str, data: str | None = None) -> None:
        subprocess.run([*kubectl, *argv], input=data, text=True, check=True, capture_output=True)

    run("apply", "-f", str(REPO / "crds"))
    run("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    run("create", "namespace", NAMESPACE)
    for item in INPUTS:
        run("-n", NAMESPACE, "apply", "-f", "-", data=json.dumps(item))
    metrics_port = free_port()
    env = {
        **os.environ,
        "KUBECONFIG": kubeconfig,
        "PHIOPS_WORKER_LIMIT": str(args.workers),
        "PHIOPS_API_QPS": str(args.qps),
        "PHIOPS_API_BURST": str(args.burst),
    }
    if args.memory_report:
        env["PHIOPS_MEMORY_REPORT"] = str(Path(args.memory_report).resolve())
    argv = ["-m", "phiops_operator", "-A", "--metrics-port", str(metrics_port)]
    with (work / "operator.log").open("wb") as log:
        operator = subprocess.Popen(
            [sys.executable, *argv, "--liveness-port", "0"], env=env, stdout=log, stderr=log
        )
    stack.callback(stop_process, operator)
    counters = Counters(plane.config.kubeconfig, f"http://127.0.0.1:{metrics_port}/metrics")
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError):
            counters.read()
            break
        if time.monotonic() > deadline or operator.poll() is not None:
            raise RuntimeError(f"the operator did not start; see {work / 'operator.log'}")
        time.sleep(1)
    time.sleep(args.settle)  # its start-up listing is over
    parts = {name: Process(pid) for name, pid in plane.status().items() if pid is not None}
    return Setup(kubeconfig, counters, Process(operator.pid), parts)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(10)
    if process.poll() is None:
        process.kill()


async def measure(args: argparse.Namespace, setup: Setup) -> None:
    from kubernetes_asyncio import client, config

    counters, proc = setup.counters, setup.operator

    async def read() -> tuple[float, float, float, float]:
        return await asyncio.to_thread(counters.read)

    print(
        f"plane: kube-apiserver 1.20 (no nodes), operator: workers {args.workers}, client"
        f" qps {args.qps} burst {args.burst}; {args.count} resources at {args.rate}/s"
        f" ({', '.join(KINDS)} in turn)"
    )
    # Baseline: the plane and the operator with nothing to do.
    if args.memory_report:
        os.kill(proc.pid, signal.SIGUSR1)
        await asyncio.sleep(5)
    rss0, before = proc.rss_mb(), await read()
    await asyncio.sleep(args.idle)
    baseline = await read()
    base_rate = rate(before, baseline, 0)
    print(f"baseline idle (no resources): API server {base_rate:.2f} requests/s")

    await config.load_kube_config(config_file=setup.kubeconfig)
    api = client.ApiClient()
    milvus_server, milvus = await fake_milvus()
    seen, stop = Seen(), asyncio.Event()
    watcher = asyncio.create_task(watch_all(api, seen, stop))
    await asyncio.sleep(2)  # the watches are open

    cpu0, busy0, plane0 = proc.cpu(), await read(), setup.plane_cpu()
    detail0 = await asyncio.to_thread(counters.breakdown)
    started = time.monotonic()
    await create_all(api, args.count, args.rate, milvus, seen)
    created = time.monotonic() - started
    deadline = time.monotonic() + args.timeout
    # Polling our own in-memory tallies, not the API server.
    while min(len(seen.child), len(seen.status)) < args.count:
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    busy1, cpu1, plane1 = await read(), proc.cpu(), setup.plane_cpu()
    detail1 = await asyncio.to_thread(counters.breakdown)
    busy_seconds = busy1[3] - busy0[3]
    to_child = [seen.child[k] - t for k, t in seen.created.items() if k in seen.child]
    to_status = [seen.status[k] - t for k, t in seen.created.items() if k in seen.status]
    print(
        f"created {args.count} in {created:.1f} s; children seen for {len(to_child)},"
        f" status for {len(to_status)}; all within {busy_seconds:.1f} s"
    )
    figures = {
        "children p50": percentile(to_child, 50),
        "children p99": percentile(to_child, 99),
        "status p50": percentile(to_status, 50),
        "status p99": percentile(to_status, 99),
    }
    print(
        f"create -> first child     p50 {figures['children p50']:.2f} s,"
        f" p99 {figures['children p99']:.2f} s  (aim p99 <= 1 s)"
    )
    print(
        f"create -> status written  p50 {figures['status p50']:.2f} s,"
        f" p99 {figures['status p99']:.2f} s  (aim p99 <= 2 s)"
    )
    print(
        f"busy: API server {rate(busy0, busy1, 0):.1f} requests/s, the operator's own"
        f" {rate(busy0, busy1, 1):.1f}/s ({busy1[1] - busy0[1]:.0f} requests, waited"
        f" {busy1[2] - busy0[2]:.1f} s for the rate limit); operator CPU"
        f" {cpu1 - cpu0:.1f} s in {busy_seconds:.1f} s"
    )

    show_breakdown("busiest requests while busy", detail0, detail1)
    others = ", ".join(f"{name} {plane1[name] - plane0[name]:.1f} s" for name in plane0)
    print(f"  CPU of the plane in those {busy_seconds:.1f} s: {others} (2 cores in all)")
    for kind, (count, seconds) in sorted((await asyncio.to_thread(counters.reconciles)).items()):
        print(
            f"  {kind:<14} {count:5.0f} reconciles, {1000 * seconds / max(count, 1):6.1f} ms mean"
        )

    await asyncio.sleep(args.settle)
    cpu2, idle0 = proc.cpu(), await read()
    detail2 = await asyncio.to_thread(counters.breakdown)
    await asyncio.sleep(args.idle)
    idle1, cpu3 = await read(), proc.cpu()
    show_breakdown("requests while idle", detail2, await asyncio.to_thread(counters.breakdown))
    idle_rate, ours = rate(idle0, idle1, 0), rate(idle0, idle1, 1)
    per_resource = max(0.0, idle_rate - base_rate) / args.count
    figures["idle per resource"] = per_resource
    print(
        f"idle ({args.idle:.0f} s, {args.settle:.0f} s after the last status): API server"
        f" {idle_rate:.2f} requests/s ({idle_rate - base_rate:+.2f} over the baseline),"
        f" the operator's own {ours:.3f}/s; operator CPU {cpu3 - cpu2:.2f} s"
    )
    print(
        f"RATIO idle requests/s per resource     {per_resource:.5f}  (aim <= 0.05; the"
        " increase over the baseline, every client counted)"
    )
    print(f"  events in the namespace, by who posted them: {await events_by_source(core_api(api))}")
    rss = proc.rss_mb()
    figures["rss"] = rss - rss0
    print(f"operator RSS {rss0:.0f} MB -> {rss:.0f} MB: +{rss - rss0:.1f} MB  (aim <= 30 MB)")
    if args.memory_report:  # the operator appends its report (tracemalloc, gc) there
        os.kill(proc.pid, signal.SIGUSR1)
        await asyncio.sleep(5)
        print(f"memory report: {args.memory_report}")

    print("\nsummary")
    for key, aim in AIMS.items():
        value = figures[key]
        verdict = "met" if value <= aim else "MISSED"
        print(f"  {key:<20} {value:10.4f}  aim <= {aim:<6} {verdict}")

    stop.set()
    await watcher
    milvus_server.close()
    await api.close()


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    # SIGTERM too stops the plane and the operator on the way out.
    signal.signal(signal.SIGTERM, _interrupt)
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--count", type=int, default=1000, help="resources in all")
    parser.add_argument("--rate", type=float, default=50, help="created per second")
    parser.add_argument("--workers", type=int, default=20, help="PHIOPS_WORKER_LIMIT")
    parser.add_argument("--qps", type=float, default=100, help="PHIOPS_API_QPS")
    parser.add_argument("--burst", type=int, default=200, help="PHIOPS_API_BURST")
    parser.add_argument("--idle", type=float, default=60, help="seconds of each idle window")
    parser.add_argument("--settle", type=float, default=15, help="seconds before idle windows")
    parser.add_argument("--timeout", type=float, default=300, help="seconds to wait for all")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--memory-report",
        metavar="FILE",
        help="trace the operator's allocations (slower) and write where its memory went here",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-operator-"))
    from phiops_devcluster.plane import ControlPlane, PlaneConfig

    api_port = free_port()
    plane = ControlPlane(
        PlaneConfig(
            state_dir=work / "state",
            kubeconfig=work / "kubeconfig",
            api_port=api_port,
            etcd_port=free_port(),
            with_nodes=False,
            # Room for a Service per PhiDeployment (a /24 runs out after 254).
            service_cidr=f"10.{150 + api_port % 50}.{api_port // 50 % 16 * 16}.0/20",
        )
    )
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(plane.down, wipe=True)
            setup = start(args, work, plane, stack)
            asyncio.run(measure(args, setup))
    except BaseException:
        args.keep = True
        raise
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
