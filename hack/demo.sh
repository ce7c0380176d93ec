#!/usr/bin/env bash
# The whole flow that exists today, on a real local control plane:
# cluster up -> CRDs -> operator -> samples -> a knowledge base embedded into milvus-lite and
# queried -> status -> bad resources refused -> metrics -> tear down.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${VENV:-.venv}/bin/python
export PYTHONPATH="$PWD/devtools${PYTHONPATH:+:$PYTHONPATH}"
export KUBECONFIG="$PWD/.dev/kubeconfig"
OPERATOR_LOG=.dev/operator.log
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

operator_pid=""
teardown() {
  step "tearing down"
  if [[ -n $operator_pid ]] && kill -0 "$operator_pid" 2>/dev/null; then
    kill "$operator_pid"; wait "$operator_pid" 2>/dev/null || true
    echo "operator stopped"
  fi
  "$PY" -m phiops_devcluster down
}
trap teardown EXIT

step "starting the local control plane (etcd, kube-apiserver, controller-manager, scheduler, 2 nodes)"
"$PY" -m phiops_devcluster up
kubectl get nodes -L phiops.dev/node-pool

step "installing the CRDs"
kubectl apply -f crds/
kubectl wait --for=condition=Established --timeout=30s crd --all >/dev/null
kubectl get crd -l app.kubernetes.io/part-of=phiops

step "running the operator (log: $OPERATOR_LOG)"
mkdir -p .dev
"$PY" -m phiops_operator --all-namespaces --verbose --metrics-port 18080 --liveness-port 18081 \
  >"$OPERATOR_LOG" 2>&1 &
operator_pid=$!

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
echo "GPU is asked for. The same code path on a tiny Phi-3 made by a pod of the trainer image:"
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
wait_phase finetunejob/support-tone-tiny 400
kubectl wait --for=condition=Ready --timeout=10s finetunejob/support-tone-tiny
kubectl get pods -l app.kubernetes.io/instance=support-tone-tiny -o wide
kubectl get ftj support-tone-tiny -o jsonpath='{.status.adapter}{"\n"}{.status.dataset}{"\n"}'

step "kubectl get phiops"
kubectl get phiops -o wide

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

step "operator metrics"
curl -s localhost:18080/metrics | grep -E '^phiops_(reconcile_total|knowledge_base_)'
