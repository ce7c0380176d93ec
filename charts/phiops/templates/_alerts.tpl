{{- /*
The alert rules, as Prometheus rule groups. templates/prometheusrule.yaml wraps them in a
PrometheusRule; files/alerts.yaml is the same rules rendered with the default values, for a
Prometheus without the Prometheus operator (`python -m tests.chart.sync` keeps it in step, and
tests/chart runs `promtool test rules` on it). Each alert's runbook is a section of
docs/operations/alerts.md.
*/}}
{{- define "phiops.alertGroups" -}}
{{- $v := .Values.prometheusRule }}
{{- $runbook := $v.runbookBaseUrl }}
{{- $job := .Values.metrics.jobName -}}
groups:
  - name: phiops-operator
    rules:
      - alert: PhiopsOperatorDown
        expr: absent(up{job=~"{{ $job }}"} == 1)
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: The phiops operator is down or not scraped
          description: {{ printf "No target of job '%s' has been up for 5 minutes: phiops resources are not reconciled, and their deletions hang on the phiops.dev/cleanup finalizer." $job | quote }}
          runbook_url: {{ printf "%s#phiopsoperatordown" $runbook }}
      - alert: PhiopsReconcileErrors
        expr: |-
          sum by (kind) (rate(phiops_reconcile_total{result=~"error|retry"}[10m]))
            > {{ $v.reconcileErrorsPerSecond }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: {{ `phiops keeps failing to reconcile {{ $labels.kind }} resources` | quote }}
          description: {{ `{{ printf "%.3f" $value }} failed or retried reconciles of {{ $labels.kind }} per second over the last 10 minutes.` | quote }}
          runbook_url: {{ printf "%s#phiopsreconcileerrors" $runbook }}
      - alert: PhiopsOperatorRestarting
        # Kopf stopped on an API error and the operator started it again in its process
        # (phiops_operator/supervise.py): once after an API server restart is expected.
        expr: increase(phiops_operator_restarts_total[30m]) >= 3
        labels:
          severity: warning
        annotations:
          summary: The phiops operator keeps restarting its controller
          description: {{ `Kopf stopped on an error and was started again {{ printf "%.0f" $value }} times in 30 minutes in {{ $labels.pod }}.` | quote }}
          runbook_url: {{ printf "%s#phiopsoperatorrestarting" $runbook }}
  - name: phiops-knowledge-bases
    rules:
      - alert: PhiopsKnowledgeBaseSyncFailing
        # A failure counter appears only at its first failure, where increase() sees nothing
        # yet: series that are new within the window count too.
        expr: |-
          sum by (namespace, name) (increase(phiops_knowledge_base_sync_failures_total[30m])) > 0
          or
          sum by (namespace, name) (
            phiops_knowledge_base_sync_failures_total
              unless phiops_knowledge_base_sync_failures_total offset 30m
          )
        labels:
          severity: warning
        annotations:
          summary: {{ `Knowledge base {{ $labels.namespace }}/{{ $labels.name }} failed to sync` | quote }}
          description: {{ `A sync of knowledge base {{ $labels.namespace }}/{{ $labels.name }} failed in the last 30 minutes; its Ready condition says why.` | quote }}
          runbook_url: {{ printf "%s#phiopsknowledgebasesyncfailing" $runbook }}
      - alert: PhiopsKnowledgeBaseStale
        expr: |-
          (time() - phiops_knowledge_base_last_successful_sync_timestamp_seconds)
            > on (namespace, name)
          ({{ $v.knowledgeBaseStaleIntervals }} * phiops_knowledge_base_sync_interval_seconds > 0)
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ `Knowledge base {{ $labels.namespace }}/{{ $labels.name }} is stale` | quote }}
          description: {{ printf "Knowledge base {{ $labels.namespace }}/{{ $labels.name }} last synced successfully {{ $value | humanizeDuration }} ago, more than %v sync intervals." $v.knowledgeBaseStaleIntervals | quote }}
          runbook_url: {{ printf "%s#phiopsknowledgebasestale" $runbook }}
  - name: phiops-fine-tuning
    rules:
      - alert: PhiopsFineTuneJobFailed
        expr: phiops_fine_tune_job_phase{phase="Failed"} == 1
        labels:
          severity: warning
        annotations:
          summary: {{ `Fine-tune job {{ $labels.namespace }}/{{ $labels.name }} failed` | quote }}
          description: {{ `Fine-tune job {{ $labels.namespace }}/{{ $labels.name }} is in phase Failed; its Ready condition gives the reason (e.g. GPUOutOfMemory, InvalidDataset).` | quote }}
          runbook_url: {{ printf "%s#phiopsfinetunejobfailed" $runbook }}
      - alert: PhiopsFineTuneJobStuck
        expr: |-
          (time() - phiops_fine_tune_job_last_progress_timestamp_seconds) > {{ $v.fineTuneJobStuckSeconds }}
          and on (namespace, name)
          phiops_fine_tune_job_phase{phase="Running"} == 1
        for: 5m
        labels:
          severity: warning
        annotations:
          summary: {{ `Fine-tune job {{ $labels.namespace }}/{{ $labels.name }} makes no progress` | quote }}
          description: {{ `Fine-tune job {{ $labels.namespace }}/{{ $labels.name }} is Running but reported no training progress for {{ $value | humanizeDuration }}.` | quote }}
          runbook_url: {{ printf "%s#phiopsfinetunejobstuck" $runbook }}
  - name: phiops-serving
    rules:
      - alert: PhiopsDeploymentUnavailable
        expr: |-
          phiops_deployment_ready_replicas == 0
          and on (namespace, name)
          phiops_deployment_replicas > 0
        for: 5m
        labels:
          severity: critical
        annotations:
          summary: {{ `PhiDeployment {{ $labels.namespace }}/{{ $labels.name }} has no ready replica` | quote }}
          description: {{ `PhiDeployment {{ $labels.namespace }}/{{ $labels.name }} wants replicas but none has been ready for 5 minutes; its API answers nothing.` | quote }}
          runbook_url: {{ printf "%s#phiopsdeploymentunavailable" $runbook }}
      - alert: PhiopsDeploymentUnavailable
        expr: |-
          phiops_deployment_ready_replicas < on (namespace, name) phiops_deployment_replicas
          and
          phiops_deployment_ready_replicas > 0
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: {{ `PhiDeployment {{ $labels.namespace }}/{{ $labels.name }} runs below its replicas` | quote }}
          description: {{ `PhiDeployment {{ $labels.namespace }}/{{ $labels.name }} has had only {{ $value }} ready replica(s), fewer than it wants, for 15 minutes.` | quote }}
          runbook_url: {{ printf "%s#phiopsdeploymentunavailable" $runbook }}
      - alert: PhiopsInferenceLatencyHigh
        expr: |-
          histogram_quantile(0.95,
            sum by (namespace, pod, model, le) (rate(phiops_serve_request_duration_seconds_bucket[5m]))
          ) > {{ $v.inferenceLatencySeconds }}
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ `Slow answers from model {{ $labels.model }} in {{ $labels.namespace }}/{{ $labels.pod }}` | quote }}
          description: {{ printf "The 95th percentile request duration of model {{ $labels.model }} on pod {{ $labels.namespace }}/{{ $labels.pod }} is {{ $value | humanizeDuration }}, above %vs, for 10 minutes." $v.inferenceLatencySeconds | quote }}
          runbook_url: {{ printf "%s#phiopsinferencelatencyhigh" $runbook }}
      # vLLM's engine series (job phiops-serve; per pod, summed over its engines). A request
      # waits in vLLM's queue when the running batch has no room (engine.maxNumSeqs, the KV
      # cache, LoRA slots). A queue longer than the batch means a request waits longer than a
      # whole request takes to run; the floor keeps small batches from paging on a few.
      - alert: PhiopsInferenceQueueBacklog
        expr: |-
          sum by (namespace, pod) (avg_over_time(vllm:num_requests_waiting[5m])) > {{ $v.inferenceQueueWaiting }}
          and
          sum by (namespace, pod) (avg_over_time(vllm:num_requests_waiting[5m]))
            > sum by (namespace, pod) (avg_over_time(vllm:num_requests_running[5m]))
        for: 10m
        labels:
          severity: warning
        annotations:
          summary: {{ `Requests queue up in the inference engine of {{ $labels.namespace }}/{{ $labels.pod }}` | quote }}
          description: {{ printf "{{ $value | humanize }} requests waited in vLLM's queue on pod {{ $labels.namespace }}/{{ $labels.pod }} (5-minute average), more than %v and more than it runs at once, for 10 minutes." $v.inferenceQueueWaiting | quote }}
          runbook_url: {{ printf "%s#phiopsinferencequeuebacklog" $runbook }}
      # Free blocks include cached prefixes nothing uses any more: a full cache is one the
      # running requests hold, and the next token that needs a block preempts one of them.
      - alert: PhiopsKVCacheSaturated
        expr: |-
          max by (namespace, pod) (avg_over_time(vllm:kv_cache_usage_perc[5m])) > {{ $v.inferenceKVCacheUsage }}
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: {{ `The KV cache of {{ $labels.namespace }}/{{ $labels.pod }} is full` | quote }}
          description: {{ printf "vLLM's KV cache on pod {{ $labels.namespace }}/{{ $labels.pod }} has been {{ $value | humanizePercentage }} in use (5-minute average), above %s%%, for 15 minutes: new requests wait and running ones get preempted." (printf "%.4g" (mulf $v.inferenceKVCacheUsage 100)) | quote }}
          runbook_url: {{ printf "%s#phiopskvcachesaturated" $runbook }}
      # A preempted request loses its KV cache and is computed again: GPU time thrown away.
      - alert: PhiopsInferencePreempting
        expr: |-
          sum by (namespace, pod) (rate(vllm:num_preemptions_total[5m])) > 0
        for: 15m
        labels:
          severity: warning
        annotations:
          summary: {{ `The inference engine of {{ $labels.namespace }}/{{ $labels.pod }} keeps preempting requests` | quote }}
          description: {{ `vLLM on pod {{ $labels.namespace }}/{{ $labels.pod }} has preempted requests for 15 minutes ({{ printf "%.3f" $value }} per second over the last 5 minutes): their KV cache is dropped and computed again.` | quote }}
          runbook_url: {{ printf "%s#phiopsinferencepreempting" $runbook }}
{{- end }}
