{{/* Chart name, truncated to 63 characters (DNS label). */}}
{{- define "maas-authz.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full resource name: <release>-<chart>, or the release name when it already contains the chart name. */}}
{{- define "maas-authz.fullname" -}}
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

{{- define "maas-authz.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "maas-authz.selectorLabels" -}}
app.kubernetes.io/name: {{ include "maas-authz.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "maas-authz.labels" -}}
helm.sh/chart: {{ include "maas-authz.chart" . }}
{{ include "maas-authz.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: maas-authz
{{- end }}

{{- define "maas-authz.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "maas-authz.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "maas-authz.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* Secret and key of DATABASE_URL. */}}
{{- define "maas-authz.databaseSecretName" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecret }}
{{- else }}
{{- include "maas-authz.fullname" . }}
{{- end }}
{{- end }}

{{- define "maas-authz.databaseSecretKey" -}}
{{- if .Values.database.existingSecret }}
{{- .Values.database.existingSecretKey }}
{{- else -}}
DATABASE_URL
{{- end }}
{{- end }}

{{- define "maas-authz.policyConfigMapName" -}}
{{- if .Values.policy.existingConfigMap }}
{{- .Values.policy.existingConfigMap }}
{{- else }}
{{- printf "%s-policy" (include "maas-authz.fullname" .) }}
{{- end }}
{{- end }}

{{/* host:port for a listener; IPv6 bind addresses are bracketed. */}}
{{- define "maas-authz.listen" -}}
{{- $host := .root.Values.bindAddress }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host (int .port) }}
{{- else }}
{{- printf "%s:%d" $host (int .port) }}
{{- end }}
{{- end }}

{{/*
Whole seconds (rounded up) of a Go-style duration: 500ms, 10s, 2h30m, 1.5h, 90d.
The schema has already checked the syntax.
*/}}
{{- define "maas-authz.durationSeconds" -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 "d" 86400.0 }}
{{- $total := 0.0 }}
{{- range $part := regexFindAll "[0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h|d)" (toString .) -1 }}
{{- $number := regexFind "^[0-9]+(\\.[0-9]+)?" $part | float64 }}
{{- $unit := regexReplaceAll "^[0-9]+(\\.[0-9]+)?" $part "" }}
{{- $total = addf $total (mulf $number (get $units $unit)) }}
{{- end }}
{{- ceil $total | int }}
{{- end }}

{{/*
Render-time checks the schema cannot express; each fails with the values to change.
*/}}
{{- define "maas-authz.validate" -}}
{{- if and (not .Values.database.url) (not .Values.database.existingSecret) }}
{{- fail "database: set database.url (the chart stores it in a Secret) or database.existingSecret (a Secret you manage, key database.existingSecretKey); one is required" }}
{{- end }}
{{- if and .Values.database.url .Values.database.existingSecret }}
{{- fail "database: database.url and database.existingSecret are mutually exclusive; set only one" }}
{{- end }}
{{- if and .Values.redis.url .Values.database.existingSecret }}
{{- fail "redis.url: with database.existingSecret, put the Redis URL in that Secret under redis.existingSecretKey instead" }}
{{- end }}
{{- if and .Values.policy.existingConfigMap .Values.policy.manifests }}
{{- fail "policy: policy.manifests and policy.existingConfigMap are mutually exclusive; set only one" }}
{{- end }}
{{- range $file, $_ := .Values.policy.manifests }}
{{- if not (regexMatch "^[A-Za-z0-9][-._A-Za-z0-9]*\\.ya?ml$" $file) }}
{{- fail (printf "policy.manifests: %q is not a valid file name; use letters, digits, '-', '_', '.' and end with .yaml or .yml (other files are not read)" $file) }}
{{- end }}
{{- end }}
{{- $grace := include "maas-authz.durationSeconds" .Values.config.shutdownGrace | int }}
{{- $needed := add $grace .Values.lifecycle.preStopSleepSeconds }}
{{- if le (int .Values.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed config.shutdownGrace (%s = %ds) + lifecycle.preStopSleepSeconds (%d) = %ds, or in-flight requests are killed before they drain" (int .Values.terminationGracePeriodSeconds) .Values.config.shutdownGrace $grace (int .Values.lifecycle.preStopSleepSeconds) $needed) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- fail (printf "autoscaling: minReplicas (%d) must not exceed maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) }}
{{- fail "autoscaling: set autoscaling.targetCPUUtilizationPercentage or autoscaling.targetMemoryUtilizationPercentage (both are 0), or autoscaling.enabled=false" }}
{{- end }}
{{- if and .Values.gateway.envoyGateway.enabled (not .Values.gateway.envoyGateway.targetRefs) }}
{{- fail "gateway.envoyGateway.targetRefs: name at least one HTTPRoute or Gateway for the SecurityPolicy" }}
{{- end }}
{{- end }}

{{/* Environment shared by the server, the migrate Job and the cleanup CronJob (DatabaseConfig). */}}
{{- define "maas-authz.databaseEnv" -}}
- name: DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "maas-authz.databaseSecretName" . }}
      key: {{ include "maas-authz.databaseSecretKey" . }}
- name: MAAS_AUTHZ_TENANT
  value: {{ .Values.config.tenant | quote }}
- name: MAAS_AUTHZ_DB_POOL_SIZE
  value: {{ .Values.database.poolSize | quote }}
- name: MAAS_AUTHZ_DB_QUERY_TIMEOUT
  value: {{ .Values.database.queryTimeout | quote }}
- name: MAAS_AUTHZ_DB_CONNECT_TIMEOUT
  value: {{ .Values.database.connectTimeout | quote }}
- name: MAAS_AUTHZ_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.config.logLevel | quote }}
{{- end }}

{{/*
A whole number or "off", quoted for an env var (YAML numbers arrive as floats: no 1e+06).
*/}}
{{- define "maas-authz.countOrOff" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ . | int64 | quote }}{{ end -}}
{{- end }}

{{/*
A rate per second (any positive number) or "off", quoted for an env var.
*/}}
{{- define "maas-authz.rateOrOff" -}}
{{- if kindIs "string" . }}{{ . | quote }}{{ else }}{{ . | toString | quote }}{{ end -}}
{{- end }}
