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
{{- range $what, $tls := dict "database" .Values.database.tls "redis" .Values.redis.tls }}
{{- if and $tls.caSecret $tls.caConfigMap }}
{{- fail (printf "%s.tls: caSecret and caConfigMap are mutually exclusive; set only one" $what) }}
{{- end }}
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
{{- if and .Values.gateway.envoyGateway.enabled (not .Values.gateway.envoyGateway.targetRefs) (not .Values.gateway.models) }}
{{- fail "gateway.envoyGateway.targetRefs: name at least one HTTPRoute or Gateway for the SecurityPolicy (or list the model routes in gateway.models)" }}
{{- end }}
{{- include "maas-authz.validateSecurity" . }}
{{- if and .Values.gateway.istio.enabled .Values.gateway.istio.meter (not .Values.gateway.models) }}
{{- fail "gateway.istio.meter: list the model routes in gateway.models (the token meter is enabled on exactly those), or set gateway.istio.meter=false and meter elsewhere" }}
{{- end }}
{{- if and .Values.gateway.envoyGateway.enabled .Values.gateway.envoyGateway.meter (not .Values.gateway.models) }}
{{- fail "gateway.envoyGateway.meter: list the model routes in gateway.models (the token meter is attached to exactly those), or set gateway.envoyGateway.meter=false and meter elsewhere" }}
{{- end }}
{{- if and (eq .Values.policy.source "kubernetes") (or .Values.policy.existingConfigMap .Values.policy.manifests) }}
{{- fail "policy: with policy.source=kubernetes the policy comes from the cluster's MaaS objects; unset policy.manifests and policy.existingConfigMap" }}
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
{{- if or .Values.database.tls.caSecret .Values.database.tls.caConfigMap }}
- name: MAAS_AUTHZ_DATABASE_CA_FILE
  value: {{ printf "/etc/maas-authz/database-ca/%s" .Values.database.tls.caKey | quote }}
{{- end }}
- name: MAAS_AUTHZ_LOG_FORMAT
  value: {{ .Values.config.logFormat | quote }}
- name: RUST_LOG
  value: {{ .Values.config.logLevel | quote }}
{{- end }}

{{/*
Render-time checks of the security wiring (NetworkPolicy, model routes, path hygiene); each
fails with the values to change.
*/}}
{{- define "maas-authz.validateSecurity" -}}
{{- $np := .Values.networkPolicy }}
{{- if and $np.grpcFrom $np.unsafeGrpcFromAnywhere }}
{{- fail "networkPolicy: grpcFrom and unsafeGrpcFromAnywhere contradict each other; keep grpcFrom (the gateway's pods) and drop unsafeGrpcFromAnywhere" }}
{{- end }}
{{- if and $np.enabled (not $np.grpcFrom) (not $np.unsafeGrpcFromAnywhere) }}
{{- fail "networkPolicy.grpcFrom: name the gateway's pods (e.g. [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: istio-system}}, podSelector: {matchLabels: {istio: ingressgateway}}}]): whoever reaches the gRPC port can call Check and the token meter. Only on a cluster that does not enforce NetworkPolicies, set networkPolicy.unsafeGrpcFromAnywhere=true instead (unsafe)" }}
{{- end }}
{{- if and (not $np.enabled) (not $np.unsafeGrpcFromAnywhere) }}
{{- fail "networkPolicy.enabled=false leaves the gRPC port (Check and the token meter) open to every source: keep the NetworkPolicy and set networkPolicy.grpcFrom, or confirm with networkPolicy.unsafeGrpcFromAnywhere=true (unsafe)" }}
{{- end }}
{{- range $i, $peer := $np.grpcFrom }}
{{- $pods := $peer.podSelector | default dict }}
{{- if not (or $pods.matchLabels $pods.matchExpressions $peer.ipBlock) }}
{{- fail (printf "networkPolicy.grpcFrom[%d]: select the gateway's pods with a non-empty podSelector (alone, or with a namespaceSelector), or give an ipBlock; a namespaceSelector alone admits every pod of those namespaces" $i) }}
{{- end }}
{{- end }}
{{- $gw := .Values.gateway }}
{{- if and $gw.models (not $gw.envoyGateway.enabled) (not $gw.istio.enabled) }}
{{- fail "gateway.models: no gateway wiring carries them; set gateway.envoyGateway.enabled or gateway.istio.enabled (a plain Envoy sets context_extensions per route itself, see deploy/envoy/envoy.yaml)" }}
{{- end }}
{{- $seen := dict }}
{{- range $i, $m := include "maas-authz.routeModels" . | fromJsonArray }}
{{- if and $gw.envoyGateway.enabled (not $m.httpRoute) }}
{{- fail (printf "gateway.models[%d] (%s): set httpRoute, the HTTPRoute the Envoy Gateway SecurityPolicy attaches to" $i $m.model) }}
{{- end }}
{{- if and $gw.istio.enabled (not $m.httpRoute) (not $m.istioRoutes) }}
{{- fail (printf "gateway.models[%d] (%s): set httpRoute or istioRoutes, the Envoy route names on the Istio gateway" $i $m.model) }}
{{- end }}
{{- $route := printf "%s/%s/%s" $m.namespace $m.httpRoute $m.sectionName }}
{{- if and $m.httpRoute (hasKey $seen $route) }}
{{- fail (printf "gateway.models[%d]: HTTPRoute %s/%s%s is listed twice (as %s and %s); one route serves one model" $i $m.namespace $m.httpRoute (ternary (printf " rule %s" $m.sectionName) "" (ne $m.sectionName "")) (get $seen $route) $m.model) }}
{{- end }}
{{- $_ := set $seen $route $m.model }}
{{- if $gw.envoyGateway.enabled }}
{{- range $gw.envoyGateway.targetRefs }}
{{- if and (eq .kind "HTTPRoute") (eq .name $m.httpRoute) (eq $m.namespace (default $.Release.Namespace $gw.envoyGateway.namespace)) (eq (default "" .sectionName) $m.sectionName) }}
{{- fail (printf "gateway.models[%d]: HTTPRoute %s is also in gateway.envoyGateway.targetRefs; Envoy Gateway applies one SecurityPolicy per route, so list it only in gateway.models" $i $m.httpRoute) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- if and $gw.envoyGateway.enabled $gw.envoyGateway.pathHygiene (not (include "maas-authz.envoyGatewayGateways" . | fromJsonArray)) }}
{{- fail "gateway.envoyGateway.gatewayRefs: name the Gateway(s) of the model routes ([{name, namespace}]) for the path-hygiene ClientTrafficPolicy, or set gateway.envoyGateway.pathHygiene=false if you manage that Gateway's ClientTrafficPolicy yourself" }}
{{- end }}
{{- if and $gw.istio.enabled (or $gw.istio.pathHygiene $gw.models) (not (include "maas-authz.istioWorkloadSelectors" . | fromJsonArray)) }}
{{- fail "gateway.istio.workloadSelector: the targetRefs name no Gateway, so the chart cannot select the gateway pods for its EnvoyFilters; set the labels of the gateway pods" }}
{{- end }}
{{- end }}

{{/* gateway.models with defaults filled in, as a JSON list. */}}
{{- define "maas-authz.routeModels" -}}
{{- $out := list }}
{{- $ns := default .Release.Namespace .Values.gateway.envoyGateway.namespace }}
{{- range .Values.gateway.models }}
{{- $namespace := default $ns .namespace }}
{{- $istio := .istioRoutes | default list }}
{{- if and (not $istio) .httpRoute }}
{{- /* Istio names the Envoy routes of an HTTPRoute's rule N "<namespace>.<name>.<N>". */}}
{{- $istio = list (printf "%s.%s.0" $namespace .httpRoute) }}
{{- end }}
{{- $out = append $out (dict "model" .model "httpRoute" (default "" .httpRoute) "namespace" $namespace "sectionName" (default "" .sectionName) "istioRoutes" $istio) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* The Gateways the Envoy Gateway ClientTrafficPolicy attaches to, as a JSON list of {name, namespace, sectionName}. */}}
{{- define "maas-authz.envoyGatewayGateways" -}}
{{- $ns := default .Release.Namespace .Values.gateway.envoyGateway.namespace }}
{{- $out := list }}
{{- range .Values.gateway.envoyGateway.gatewayRefs }}
{{- $out = append $out (dict "name" .name "namespace" (default $ns .namespace) "sectionName" (default "" .sectionName)) }}
{{- end }}
{{- if not $out }}
{{- range .Values.gateway.envoyGateway.targetRefs }}
{{- if eq .kind "Gateway" }}
{{- $out = append $out (dict "name" .name "namespace" $ns "sectionName" (default "" .sectionName)) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/* Label sets selecting the Istio gateway pods for the chart's EnvoyFilters, as a JSON list. */}}
{{- define "maas-authz.istioWorkloadSelectors" -}}
{{- $istio := .Values.gateway.istio }}
{{- $out := list }}
{{- if $istio.workloadSelector }}
{{- $out = list $istio.workloadSelector }}
{{- else if not $istio.targetRefs }}
{{- $out = list $istio.selector }}
{{- else }}
{{- range $istio.targetRefs }}
{{- if eq .kind "Gateway" }}
{{- /* Istio labels the pods it deploys for a Gateway API Gateway with its name. */}}
{{- $out = append $out (dict "gateway.networking.k8s.io/gateway-name" .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{/*
Client-sent headers the gateway removes before any filter: the identity Check stamps and the
meter trusts must never come from the client. x-maas-subscription stays: the REST API reads it.
*/}}
{{- define "maas-authz.untrustedClientHeaders" -}}
{{- toJson (list "x-maas-username" "x-maas-group" "x-maas-tier" "x-maas-key-id" "x-maas-identity-assertion" "x-gateway-model-name") }}
{{- end }}

{{/* The gateway's per-connection buffer: the meter reads a whole request body (plus headroom). */}}
{{- define "maas-authz.gatewayBufferBytes" -}}
{{- add (int64 .Values.enforcement.meterMaxRequestBytes) 65536 }}
{{- end }}

{{/* Secret and key of MAAS_AUTHZ_IDENTITY_SIGNING_KEYS. */}}
{{- define "maas-authz.identitySigningSecretName" -}}
{{- if .Values.enforcement.identitySigningKeys.existingSecret }}
{{- .Values.enforcement.identitySigningKeys.existingSecret }}
{{- else }}
{{- printf "%s-identity-signing" (include "maas-authz.fullname" .) }}
{{- end }}
{{- end }}

{{- define "maas-authz.identitySigningSecretKey" -}}
{{- if .Values.enforcement.identitySigningKeys.existingSecret }}
{{- .Values.enforcement.identitySigningKeys.existingSecretKey }}
{{- else -}}
MAAS_AUTHZ_IDENTITY_SIGNING_KEYS
{{- end }}
{{- end }}

{{/*
The signing keys' value as the cluster holds it (base64, as in a Secret's data), or "" when it
cannot be read (helm template, no access). For the chart's own Secret: the stored value, else a
new `chart=<64 base64 characters of 48 random bytes>`, generated once per render and remembered
in the root context, so the Secret and the Deployment's checksum see the same value.
*/}}
{{- define "maas-authz.identitySigningKeysData" -}}
{{- if not (hasKey $ "maasAuthzIdentitySigningKeysData") }}
{{- $name := include "maas-authz.identitySigningSecretName" . }}
{{- $key := include "maas-authz.identitySigningSecretKey" . }}
{{- $stored := dig "data" $key "" (lookup "v1" "Secret" .Release.Namespace $name) }}
{{- if and (not $stored) (not .Values.enforcement.identitySigningKeys.existingSecret) }}
{{- $stored = printf "chart=%s" (randBytes 48) | b64enc }}
{{- end }}
{{- $_ := set $ "maasAuthzIdentitySigningKeysData" $stored }}
{{- end }}
{{- get $ "maasAuthzIdentitySigningKeysData" }}
{{- end }}

{{/* The extAuth of the chart's Envoy Gateway SecurityPolicies: gRPC to this release's Service, fail closed. */}}
{{- define "maas-authz.envoyGatewayExtAuth" -}}
failOpen: {{ .Values.gateway.envoyGateway.failOpen }}
{{- with .Values.gateway.envoyGateway.headersToExtAuth }}
headersToExtAuth:
  {{- toYaml . | nindent 2 }}
{{- end }}
grpc:
  backendRefs:
    - group: ""
      kind: Service
      name: {{ include "maas-authz.fullname" . }}
      namespace: {{ .Release.Namespace }}
      port: {{ .Values.service.grpcPort }}
{{- end }}

{{/*
A CA bundle from database.tls or redis.tls, mounted at /etc/maas-authz/<name>/<caKey>:
its volume and its mount (nothing when neither caSecret nor caConfigMap is set).
Arguments: dict "name" "database-ca" "tls" .Values.database.tls
*/}}
{{- define "maas-authz.caVolume" -}}
{{- if .tls.caSecret }}
- name: {{ .name }}
  secret:
    secretName: {{ .tls.caSecret }}
    items:
      - key: {{ .tls.caKey }}
        path: {{ .tls.caKey }}
{{- else if .tls.caConfigMap }}
- name: {{ .name }}
  configMap:
    name: {{ .tls.caConfigMap }}
    items:
      - key: {{ .tls.caKey }}
        path: {{ .tls.caKey }}
{{- end }}
{{- end }}

{{- define "maas-authz.caVolumeMount" -}}
{{- if or .tls.caSecret .tls.caConfigMap }}
- name: {{ .name }}
  mountPath: /etc/maas-authz/{{ .name }}
  readOnly: true
{{- end }}
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
