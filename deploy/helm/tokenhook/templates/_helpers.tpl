{{/*
The chart name, or nameOverride.
*/}}
{{- define "tokenhook.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every object: fullnameOverride, else the release name when it already
contains the chart name, else <release>-<chart>. At most 63 characters (DNS label).
*/}}
{{- define "tokenhook.fullname" -}}
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

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "tokenhook.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every object.
*/}}
{{- define "tokenhook.labels" -}}
helm.sh/chart: {{ include "tokenhook.chart" . }}
{{ include "tokenhook.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Labels that select tokenhook's pods (Deployment, Service, PDB, NetworkPolicy, anti-affinity).
*/}}
{{- define "tokenhook.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokenhook.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The image reference; the tag defaults to the chart's appVersion.
*/}}
{{- define "tokenhook.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/*
The container port: the port of config.server.listen ("0.0.0.0:8443", "[::]:8443").
*/}}
{{- define "tokenhook.containerPort" -}}
{{- .Values.config.server.listen | toString | splitList ":" | last | atoi }}
{{- end }}

{{/*
The port of config.metrics.listen, the optional second listener for /metrics; empty when unset.
*/}}
{{- define "tokenhook.metricsPort" -}}
{{- with dig "metrics" "listen" "" .Values.config }}{{ . | toString | splitList ":" | last | atoi }}{{- end }}
{{- end }}

{{/*
Names of the Secrets and ConfigMaps the pods mount.
*/}}
{{- define "tokenhook.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "tokenhook.fullname" .)) }}
{{- end }}

{{- define "tokenhook.tokensSecretName" -}}
{{- .Values.tokens.existingSecret | default (printf "%s-tokens" (include "tokenhook.fullname" .)) }}
{{- end }}

{{- define "tokenhook.clientCASecretName" -}}
{{- .Values.clientCA.existingSecret | default (printf "%s-client-ca" (include "tokenhook.fullname" .)) }}
{{- end }}

{{/*
"true" when an AuthenticationConfiguration is configured (inline or an existing ConfigMap).
*/}}
{{- define "tokenhook.authenticationConfig.enabled" -}}
{{- if or .Values.authenticationConfig.existingConfigMap .Values.authenticationConfig.content }}true{{- end }}
{{- end }}

{{- define "tokenhook.authenticationConfig.name" -}}
{{- .Values.authenticationConfig.existingConfigMap | default (printf "%s-authentication-config" (include "tokenhook.fullname" .)) }}
{{- end }}

{{/*
TOML rendering of a values map, for tokenhook.toml. Called with (dict "table" MAP "prefix" "").
Scalars and lists of scalars first, as `key = <JSON>` (JSON strings, numbers, booleans and
arrays are valid TOML), then maps as [prefix.key] tables and lists of maps as [[prefix.key]]
arrays of tables, recursively. Null values are left out. Go templates range over maps in key
order, so the output is stable.
*/}}
{{- define "tokenhook.toml" -}}
{{- $prefix := .prefix }}
{{- range $key, $value := .table }}
{{- if not (or (kindIs "invalid" $value) (kindIs "map" $value) (include "tokenhook.toml.isTableArray" $value)) }}
{{ include "tokenhook.toml.key" $key }} = {{ toJson $value }}
{{- end }}
{{- end }}
{{- range $key, $value := .table }}
{{- $path := printf "%s%s" $prefix (include "tokenhook.toml.key" $key) }}
{{- if kindIs "map" $value }}
[{{ $path }}]
{{- include "tokenhook.toml" (dict "table" $value "prefix" (printf "%s." $path)) }}
{{- else if include "tokenhook.toml.isTableArray" $value }}
{{- range $item := $value }}
[[{{ $path }}]]
{{- include "tokenhook.toml" (dict "table" $item "prefix" (printf "%s." $path)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
"true" for a non-empty list whose first element is a map.
*/}}
{{- define "tokenhook.toml.isTableArray" -}}
{{- if kindIs "slice" . }}{{- if . }}{{- if kindIs "map" (first .) }}true{{- end }}{{- end }}{{- end }}
{{- end }}

{{/*
A TOML key: bare when it can be, else quoted.
*/}}
{{- define "tokenhook.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{- else }}{{ toJson . }}{{- end }}
{{- end }}

{{/*
The ServiceAccount the pods run as.
*/}}
{{- define "tokenhook.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- .Values.serviceAccount.name | default (include "tokenhook.fullname" .) }}
{{- else }}
{{- .Values.serviceAccount.name | default "default" }}
{{- end }}
{{- end }}

{{/*
"true" when config.mint.registry.source is kubernetes: tokenhook then watches the cluster.
*/}}
{{- define "tokenhook.watchesCluster" -}}
{{- if eq (dig "mint" "registry" "source" "static" .Values.config | toString) "kubernetes" }}true{{- end }}
{{- end }}

{{/*
"true" when tokenhook reaches the cluster with the pod's own service account (no kubeconfig).
*/}}
{{- define "tokenhook.inCluster" -}}
{{- if and (include "tokenhook.watchesCluster" .) (not (dig "mint" "registry" "kubeconfig" "" .Values.config)) }}true{{- end }}
{{- end }}
