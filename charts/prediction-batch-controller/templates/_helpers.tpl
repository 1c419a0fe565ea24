{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "pbc.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: the release name, plus the chart name unless the release contains it. */}}
{{- define "pbc.fullname" -}}
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

{{- define "pbc.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "pbc.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pbc.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "pbc.labels" -}}
helm.sh/chart: {{ include "pbc.chart" . }}
{{ include "pbc.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: prediction-batch-controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "pbc.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "pbc.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "pbc.leaseName" -}}
{{- default (include "pbc.fullname" .) .Values.controller.leaderElection.leaseName }}
{{- end }}

{{- define "pbc.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The controller's rules on the namespace(s) it watches: exactly the API calls it makes (see
src/reconcile/run.rs, src/controller.rs, src/schedule/reconcile.rs and, with firestore.enabled,
src/mirror/finalizer.rs). Shared by the ClusterRole (all namespaces) and the Role
(controller.watchNamespace). No Secrets, no Pods, no wildcards.
*/}}
{{- define "pbc.controllerRules" -}}
# Watch PredictionBatches (reflector list/watch; get for direct reads).
- apiGroups: ["predictions.dev"]
  resources: ["predictionbatches"]
  verbs: ["get", "list", "watch"]
# Status is written with server-side apply (a patch) on the status subresource only.
- apiGroups: ["predictions.dev"]
  resources: ["predictionbatches/status"]
  verbs: ["patch", "update"]
# Jobs are created with an ownerReference (blockOwnerDeletion) to their batch: needs update on
# the batch's finalizers subresource where OwnerReferencesPermissionEnforcement is enabled.
- apiGroups: ["predictions.dev"]
  resources: ["predictionbatches/finalizers"]
  verbs: ["update"]
# PredictionSchedules create each run's batch, and delete batches they own (concurrencyPolicy
# Replace, history limits; by UID precondition). get (above) reads an existing one back.
- apiGroups: ["predictions.dev"]
  resources: ["predictionbatches"]
  verbs: ["create", "delete"]
# Watch PredictionSchedules (reflector list/watch; get for direct reads).
- apiGroups: ["predictions.dev"]
  resources: ["predictionschedules"]
  verbs: ["get", "list", "watch"]
# A schedule's status is written with server-side apply (a patch) on the status subresource only.
- apiGroups: ["predictions.dev"]
  resources: ["predictionschedules/status"]
  verbs: ["patch", "update"]
# Created batches carry an ownerReference (blockOwnerDeletion) to their schedule: needs update on
# the schedule's finalizers subresource where OwnerReferencesPermissionEnforcement is enabled.
- apiGroups: ["predictions.dev"]
  resources: ["predictionschedules/finalizers"]
  verbs: ["update"]
# The stage Jobs: watched by label, created, suspended/resized (merge patch), deleted after the TTL.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# The loader's result: its count is the termination message of the loader Job's finished pod,
# read once (a list by the Job's controller-uid label) when the loader Job has succeeded; and,
# with completion.backupStragglers, the worker Job's pods near the end of the stage, for their
# run times; and a watch of the pods of our Jobs (label-selected, not cached) to show pods stuck
# in ImagePullBackOff, CreateContainerConfigError or Unschedulable on their batch. Read only:
# the controller never creates, changes or deletes a pod (the Job controller does).
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
# Kubernetes events about batches and schedules (kube-runtime's Recorder: events.k8s.io/v1
# create, and patch to count repeats; core/v1 for older tooling).
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- if .Values.firestore.enabled }}
# The Firestore mirror's finalizer, added to and removed from each batch with a JSON patch.
- apiGroups: ["predictions.dev"]
  resources: ["predictionbatches"]
  verbs: ["patch"]
{{- end }}
{{- with .Values.rbac.extraRules }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of the CRD: not the controller's selector labels, it belongs to no pod. */}}
{{- define "pbc.crdLabels" -}}
helm.sh/chart: {{ include "pbc.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: crd
app.kubernetes.io/part-of: prediction-batch-controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels of the uninstall hook's objects. Not the selector labels: its pod must not look like
a controller pod, which it waits to be gone. */}}
{{- define "pbc.releaseFinalizersLabels" -}}
helm.sh/chart: {{ include "pbc.chart" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: release-finalizers
app.kubernetes.io/part-of: prediction-batch-controller
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Annotations of a post-delete hook object of the given weight (RBAC first, then the Job). */}}
{{- define "pbc.releaseFinalizersHook" -}}
helm.sh/hook: post-delete
helm.sh/hook-weight: {{ . | quote }}
helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
{{- end }}

{{/*
What every alert of templates/prometheusrule.yaml has: `for`, the labels (severity, the rule's
own, alerts.alertLabels) and the start of its annotations, runbook_url (the runbook's heading is
the alert's name, so its anchor is the name in lower case). The caller adds summary and
description under `annotations:`. Argument: dict "root" $ "alert" <name> ["labels" <dict>].
*/}}
{{- define "pbc.alertCommon" -}}
{{- $a := .root.Values.alerts -}}
{{- $severity := required (printf "alerts.severity.%s is required" .alert) (index $a.severity .alert) -}}
{{- $labels := merge (dict "severity" $severity) (.labels | default dict) ($a.alertLabels | default dict) -}}
for: {{ required (printf "alerts.for.%s is required" .alert) (index $a.for .alert) }}
labels:
  {{- toYaml $labels | nindent 2 }}
annotations:
  runbook_url: {{ printf "%s#%s" $a.runbookBaseUrl (lower .alert) | quote }}
{{- end }}
