{{/* Names, labels, images and the operator's arguments, shared by every template. */}}

{{- define "phiops.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "phiops.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "phiops.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "phiops.selectorLabels" -}}
app.kubernetes.io/name: {{ include "phiops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Every object's labels but the component. */}}
{{- define "phiops.commonLabels" -}}
helm.sh/chart: {{ include "phiops.chart" . }}
app.kubernetes.io/name: {{ include "phiops.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: phiops
{{- end }}

{{- define "phiops.labels" -}}
{{ include "phiops.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "phiops.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "phiops.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "phiops.subject" -}}
- kind: ServiceAccount
  name: {{ include "phiops.serviceAccountName" . }}
  namespace: {{ .Release.Namespace }}
{{- end }}

{{/* repository:tag, the tag defaulting to the chart's appVersion. Call with (list image root). */}}
{{- define "phiops.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}

{{- define "phiops.image" -}}
{{- include "phiops.imageRef" (list .Values.image .) }}
{{- end }}

{{/* The namespaces the operator watches; nil means every namespace. */}}
{{- define "phiops.watchNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- toJson (uniq .Values.watchNamespaces) }}
{{- else if eq .Values.rbac.scope "namespaced" }}
{{- toJson (list .Release.Namespace) }}
{{- else }}
{{- toJson list }}
{{- end }}
{{- end }}

{{- define "phiops.args" -}}
{{- $namespaces := include "phiops.watchNamespaces" . | fromJsonArray -}}
- --metrics-port
- {{ .Values.metrics.port | quote }}
- --liveness-port
- {{ .Values.liveness.port | quote }}
{{- if $namespaces }}
{{- range $namespaces }}
- -n
- {{ . | quote }}
{{- end }}
{{- else }}
- -A
{{- end }}
{{- if eq .Values.logLevel "verbose" }}
- --verbose
{{- else if eq .Values.logLevel "debug" }}
- --debug
{{- end }}
{{- end }}

{{/*
What the operator does in the namespaces it watches (read from operator/phiops_operator: k8s.py,
handlers/, builders/, observe.py; tests/chart/test_rbac.py checks this list against that code).
Children are applied server-side (create + patch), observed (get, list) and pruned (delete).
*/}}
{{- define "phiops.namespacedRules" -}}
# The custom resources: Kopf watches them and patches its finalizer and annotations; the
# operator reads the FineTuneJobs and KnowledgeBases a PhiDeployment refers to.
- apiGroups: ["phiops.dev"]
  resources: ["knowledgebases", "finetunejobs", "phideployments"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["phiops.dev"]
  resources: ["knowledgebases/status", "finetunejobs/status", "phideployments/status"]
  verbs: ["patch"]
# Children carry owner references with blockOwnerDeletion: clusters with the
# OwnerReferencesPermissionEnforcement admission plugin require this.
- apiGroups: ["phiops.dev"]
  resources: ["knowledgebases/finalizers", "finetunejobs/finalizers", "phideployments/finalizers"]
  verbs: ["update"]
# Events on the resources: one per change of a resource's Ready status or reason
# (events.py); Kopf's log-to-Event posting stays off (handlers/startup.py).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
# Every kind below is also watched ("list", "watch"): reconciles run when children and
# inputs change, not on a timer.
# Workload configuration, sync plans, training progress; datasets and documents are read;
# the ConfigMaps of superseded syncs are deleted.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Output and store claims; input claims are checked for existence.
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Termination messages of workload pods; the pods of a PhiDeployment's server.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch"]
# Store and server Services; the trainer's identity, which may patch exactly its progress
# ConfigMap (the operator holds that permission itself, so it may grant it).
- apiGroups: [""]
  resources: ["services", "serviceaccounts"]
  verbs: ["list", "watch", "create", "patch"]
- apiGroups: ["rbac.authorization.k8s.io"]
  resources: ["roles", "rolebindings"]
  verbs: ["list", "watch", "create", "patch"]
# The embedded vector store and the inference servers.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Embedding, pre-flight and training Jobs; Jobs of superseded syncs are deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Ingress policies of the embedded stores and inference servers; deleted when turned off.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch", "delete"]
{{- end }}

{{/* Cluster-scoped reads Kopf needs in every mode: it follows the CRDs it serves, and, when it
watches a list of namespaces, their creation and deletion. */}}
{{- define "phiops.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- if ne (include "phiops.watchNamespaces" .) "[]" }}
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["list", "watch"]
{{- end }}
{{- end }}
