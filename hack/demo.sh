#!/usr/bin/env bash
# The whole product on a real local control plane:
# cluster up -> helm install (CRDs + operator) -> a KnowledgeBase embedded into milvus-lite -> a FineTuneJob
# training an adapter -> a PhiDeployment serving both, asked through the openai client ->
# status -> bad resources refused -> metrics -> tear down.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${VENV:-.venv}/bin/python
HELM=${VENV:-.venv}/bin/helm
export PYTHONPATH="$PWD/devtools${PYTHONPATH:+:$PYTHONPATH}"
export KUBECONFIG="$PWD/.dev/kubeconfig"
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

teardown() {
  step "tearing down (the demo's cluster and its data)"
  "$PY" -m phiops_devcluster down --wipe
}
trap teardown EXIT

step "starting a fresh local control plane (etcd, kube-apiserver, controller-manager, scheduler, 2 nodes)"
"$PY" -m phiops_devcluster down --wipe >/dev/null 2>&1 || true
"$PY" -m phiops_devcluster up
kubectl get nodes -L phiops.dev/node-pool

step "installing phiops with its Helm chart: the CRDs and the operator (a pod of phiops-operator)"
"$HELM" install phiops charts/phiops --namespace phiops-system --create-namespace \
  --set logLevel=verbose --wait --timeout 5m
kubectl wait --for=condition=Established --timeout=60s crd -l app.kubernetes.io/part-of=phiops >/dev/null
until kubectl get phiops >/dev/null 2>&1; do sleep 1; done  # discovery lists the new kinds
kubectl get crd -l app.kubernetes.io/part-of=phiops
kubectl get deployment,pods,service -n phiops-system
"$HELM" test phiops --namespace phiops-system --timeout 3m | grep -E '^(NAME|TEST SUITE|Phase)'

step "applying the samples"
kubectl apply -f crds/samples/
for kind in knowledgebase finetunejob phideployment; do
  kubectl wait --for=condition=Accepted --timeout=60s "$kind" --all
done

step "the KnowledgeBase builds for real: milvus-lite store pod, then an embedding Job"
kubectl get deployment,service,pvc -l app.kubernetes.io/instance=handbook
kubectl wait --for=condition=Ready --timeout=300s knowledgebase/handbook
kubectl get jobs,pods -l app.kubernetes.io/instance=handbook

step "what retrieval returns for a question (the embedding image's query subcommand)"
store=$(kubectl get service handbook-store -o jsonpath='{.spec.clusterIP}')
collection=$(kubectl get knowledgebase handbook -o jsonpath='{.status.collection}')
"$PY" -m phiops_embed query --uri "http://$store:19530" --collection "$collection" --top-k 2 \
  "How long do refunds take?" 2>/dev/null | "$PY" -c "
import json, sys
for hit in json.load(sys.stdin):
    print(f\"{hit['score']:.3f}  {hit['doc_id']}: {' '.join(hit['text'].split())[:90]}\")
"

step "a FineTuneJob trains a QLoRA adapter for real (a tiny random-weight Phi-3: no model hub here)"
echo "The sample FineTuneJob support-tone names microsoft/Phi-3-mini-4k-instruct on the model hub,"
echo "which this machine cannot reach, so its pre-flight stops it (BaseModelUnavailable) before any"
echo "GPU is asked for (and the sample PhiDeployment 'assistant' waits on it: AdapterNotReady)."
echo "The same code path on a tiny Phi-3 made by a pod of the trainer image:"
kubectl apply -f examples/demo/tiny-model.yaml
phase_of() { kubectl get "$1" -o jsonpath='{.status.phase}'; }
wait_phase() {  # wait_phase OBJECT TIMEOUT: until Succeeded (or fail on Failed), showing it
  local deadline=$((SECONDS + $2))
  until [[ $(phase_of "$1") == Succeeded ]]; do
    [[ $(phase_of "$1") == Failed || $SECONDS -gt $deadline ]] && { kubectl get "$1" -o yaml; return 1; }
    kubectl get "$1" --no-headers; sleep 5
  done
}
wait_phase pod/make-tiny-phi3 180
kubectl apply -f examples/demo/fine-tune.yaml

step "a PhiDeployment using both, applied while the adapter still trains"
kubectl apply -f examples/demo/assistant.yaml
sleep 3
kubectl get phideployment assistant-tiny -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}: {.status.adapters[0].message}{"\n"}'
wait_phase finetunejob/support-tone-tiny 400
kubectl get ftj support-tone-tiny -o jsonpath='{.status.adapter}{"\n"}'
echo "the adapter is trained: the deployment rolls out with it by itself"
deadline=$((SECONDS + 300))
until kubectl wait --for=condition=Ready --timeout=5s phideployment/assistant-tiny >/dev/null 2>&1; do
  (( SECONDS > deadline )) && { kubectl get phideployment assistant-tiny -o yaml; exit 1; }
  kubectl get phideployment assistant-tiny --no-headers
done
kubectl get phideployment assistant-tiny
kubectl get deployment,service,pods -l app.kubernetes.io/instance=assistant-tiny

step "asking it through the official openai client (Service ClusterIP, as a pod would)"
ip=$(kubectl get service assistant-tiny-server -o jsonpath='{.spec.clusterIP}')
"$PY" examples/demo/ask.py "http://$ip:8000/v1" "How long do refunds take?"
echo
echo "(A random-weight tiny model answers gibberish; what it shows is the plumbing: adapters"
echo " switched per request, retrieval finding handbook/returns.md, citations, streaming."
echo " See the README for the real microsoft/Phi-3-mini-4k-instruct on a GPU cluster.)"

step "kubectl scale works on a PhiDeployment"
kubectl scale phideployment assistant-tiny --replicas=2
kubectl get phideployment assistant-tiny -o jsonpath='{.spec.replicas} replicas asked, deployment: ' && \
  sleep 2 && kubectl get deployment assistant-tiny-server -o jsonpath='{.spec.replicas}{"\n"}'
kubectl scale phideployment assistant-tiny --replicas=1

step "kubectl get phiops"
kubectl get phiops -o wide
kubectl get phideployment assistant-tiny -o jsonpath='{.status}' | "$PY" -m json.tool

step "conditions of each sample"
kubectl get phiops -o custom-columns='KIND:.kind,NAME:.metadata.name,GEN:.metadata.generation,OBSERVED:.status.observedGeneration,READY:.status.conditions[?(@.type=="Ready")].reason'
kubectl get knowledgebase handbook -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}) {.message}{"\n"}{end}'
kubectl get knowledgebase handbook -o jsonpath='{.status.documents}{"\n"}'

step "what the operator rendered for the workloads"
kubectl get configmaps -l app.kubernetes.io/managed-by=phiops-operator

step "a resource with nonsense in it is refused, naming the fields"
cat <<'YAML' | kubectl apply --validate=false -f - || true
apiVersion: phiops.dev/v1alpha1
kind: FineTuneJob
metadata: {name: nonsense}
spec:
  dataset: {url: "https://example.com/train.jsonl"}
  method: dora
  training: {batchSize: 0}
YAML

step "and one the schema cannot judge gets InvalidSpec from the operator"
cat <<'YAML' | kubectl apply -f -
apiVersion: phiops.dev/v1alpha1
kind: KnowledgeBase
metadata: {name: two-sources-in-one}
spec:
  sources:
    - name: docs
      configMap: {name: handbook-docs}
      http: {urls: ["https://example.com/a.md"]}
YAML
kubectl wait --for=condition=Stalled --timeout=60s knowledgebase two-sources-in-one
kubectl get knowledgebase two-sources-in-one -o jsonpath='{.status.conditions[?(@.type=="Ready")].message}{"\n"}'

step "operator metrics (through its Service, as Prometheus would scrape them)"
metrics_ip=$(kubectl get service phiops -n phiops-system -o jsonpath='{.spec.clusterIP}')
"$PY" -c "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())" \
  "http://$metrics_ip:8080/metrics" \
  | grep -E '^phiops_(reconcile_total|knowledge_base_|deployment_|resource_ready)'
