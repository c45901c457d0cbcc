{{/* The release's name for objects: the release name when it already names the chart. */}}
{{- define "kspan.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kspan.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kspan.labels" -}}
{{ include "kspan.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "kspan.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kspan.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The agent's config: values.config with the exporter and metrics settings merged in. */}}
{{- define "kspan.config" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $exp := dict -}}
{{- with .Values.exporter -}}
{{- if .endpoint }}{{ $_ := set $exp "kind" "otlp" }}{{ $_ := set $exp "endpoint" .endpoint }}{{ end -}}
{{- if .protocol }}{{ $_ := set $exp "protocol" .protocol }}{{ end -}}
{{- if .compression }}{{ $_ := set $exp "compression" .compression }}{{ end -}}
{{- if .timeout }}{{ $_ := set $exp "timeout" .timeout }}{{ end -}}
{{- end -}}
{{- $_ := set $cfg "exporter" (mergeOverwrite (default dict $cfg.exporter) $exp) -}}
{{- $metrics := mergeOverwrite (default dict $cfg.metrics) (dict "addr" (printf "0.0.0.0:%v" .Values.metricsPort)) -}}
{{- $_ := set $cfg "metrics" $metrics -}}
{{- toYaml $cfg -}}
{{- end -}}
