{{/* Name of the release's objects: the release name when it already says tokengate. */}}
{{- define "tokengate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else if contains "tokengate" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-tokengate" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokengate.operatorName" -}}{{ include "tokengate.fullname" . }}-operator{{- end -}}
{{- define "tokengate.webhookService" -}}{{ include "tokengate.fullname" . }}-webhook{{- end -}}
{{- define "tokengate.webhookSecret" -}}{{ include "tokengate.fullname" . }}-webhook-tls{{- end -}}
{{- define "tokengate.mutatingName" -}}{{ include "tokengate.fullname" . }}-injector{{- end -}}
{{- define "tokengate.validatingName" -}}{{ include "tokengate.fullname" . }}-policy-validator{{- end -}}

{{- define "tokengate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tokengate.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tokengate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/name: tokengate
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: tokengate
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "tokengate.selectorLabels" -}}
app.kubernetes.io/name: tokengate
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tokengate.operatorImage" -}}
{{- $tag := default .Chart.AppVersion .Values.operator.image.tag -}}
{{- if .Values.operator.image.digest -}}
{{- printf "%s@%s" .Values.operator.image.repository .Values.operator.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.operator.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "tokengate.sidecarImage" -}}
{{- $tag := default .Chart.AppVersion .Values.sidecar.image.tag -}}
{{- if .Values.sidecar.image.digest -}}
{{- printf "%s@%s" .Values.sidecar.image.repository .Values.sidecar.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.sidecar.image.repository $tag -}}
{{- end -}}
{{- end -}}
