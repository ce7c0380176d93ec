#!/usr/bin/env bash
# The whole product on a real local control plane:
# cluster up -> helm install (CRDs + operator) -> a KnowledgeBase embedded into milvus-lite -> a FineTuneJob
# training an adapter -> a PhiDeployment on vLLM serving both, asked through the openai client
# (base vs adapter, 16 concurrent streams) -> a retrained adapter loaded hot -> status -> bad
# resources refused -> metrics -> tear down.
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

step "a FineTuneJob trains a LoRA adapter for real (a tiny random-weight Phi-3: no model hub here)"
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
wait_until() {  # wait_until TIMEOUT WHAT COMMAND...: until COMMAND succeeds
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    (( SECONDS > deadline )) && { echo "timed out waiting for $what"; return 1; }
    sleep 3
  done
}
serving_pod() {
  kubectl get pods -l app.kubernetes.io/instance=assistant-tiny \
    -o jsonpath='{range .items[?(@.status.phase=="Running")]}{.metadata.name}{"\n"}{end}' | head -1
}
adapter_from() {  # adapter_from SOURCE: the PhiDeployment serves its adapter from SOURCE
  [[ $(kubectl get phideployment assistant-tiny -o jsonpath='{.status.adapters[0].source} {.status.adapters[0].loaded}') == "$1 true" ]]
}
wait_phase pod/make-tiny-phi3 180
kubectl apply -f examples/demo/fine-tune.yaml

step "a PhiDeployment (vLLM) applied while the adapter still trains: the base serves at once"
kubectl apply -f examples/demo/assistant.yaml
sleep 3
kubectl get phideployment assistant-tiny -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}: {.status.adapters[0].message}{"\n"}'
wait_phase finetunejob/support-tone-tiny 400
kubectl get ftj support-tone-tiny -o jsonpath='{.status.adapter}{"\n"}'
wait_until 120 "the serving pod" serving_pod
pod=$(serving_pod)
echo "the adapter is trained: the operator loads it into the running pod $pod"
deadline=$((SECONDS + 400))
until kubectl wait --for=condition=Ready --timeout=5s phideployment/assistant-tiny >/dev/null 2>&1; do
  (( SECONDS > deadline )) && { kubectl get phideployment assistant-tiny -o yaml; exit 1; }
  kubectl get phideployment assistant-tiny --no-headers
done
kubectl get phideployment assistant-tiny
kubectl get deployment,service,pods -l app.kubernetes.io/instance=assistant-tiny
echo "serving pod before: $pod, now: $(serving_pod)"

step "asking it through the official openai client (Service ClusterIP, as a pod would)"
ip=$(kubectl get service assistant-tiny-server -o jsonpath='{.spec.clusterIP}')
"$PY" examples/demo/ask.py "http://$ip:8000/v1" "When will my refund arrive?" \
  --expect "Refunds reach your original payment method within 5 business days."
echo
echo "(The base is a random-weight tiny model: it answers gibberish. The adapter learnt the"
echo " support answers in 200 steps. See the README for microsoft/Phi-3-mini-4k-instruct on GPUs.)"

step "the support team revises an answer: a retrained adapter is loaded hot, same pod"
kubectl get configmap support-tone-tiny-data -o json | "$PY" -c "
import json, sys
data = json.load(sys.stdin)
text = data['data']['train.jsonl'].replace('within 5 business days', 'within 3 business days')
print(json.dumps({'apiVersion': 'v1', 'kind': 'ConfigMap',
                  'metadata': {'name': 'support-tone-tiny-data-v2'}, 'data': {'train.jsonl': text}}))
" | kubectl apply -f -
kubectl apply -f examples/demo/fine-tune-v2.yaml
kubectl patch phideployment assistant-tiny --type=merge \
  -p '{"spec":{"adapters":[{"name":"support-tone","fineTuneJobRef":{"name":"support-tone-tiny-v2"}}]}}'
sleep 3
kubectl get phideployment assistant-tiny -o jsonpath='while it trains: {.status.conditions[?(@.type=="Ready")].reason}: {.status.adapters[0].message}{"\n"}'
wait_phase finetunejob/support-tone-tiny-v2 400
wait_until 180 "the retrained adapter to load" adapter_from fineTuneJob/support-tone-tiny-v2
kubectl get phideployment assistant-tiny -o jsonpath='{.status.adapters[0]}{"\n"}'
after=$(serving_pod)
echo "serving pod before: $pod, after: $after"
[[ $after == "$pod" ]] || { echo "the pod was replaced: the adapter was not loaded hot"; exit 1; }
"$PY" examples/demo/ask.py "http://$ip:8000/v1" "When will my refund arrive?" \
  --expect "Refunds reach your original payment method within 3 business days." --requests 0

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
