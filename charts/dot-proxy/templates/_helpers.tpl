{{/*
Names, labels and small computed values shared by every template.
*/}}

{{/* The chart name, overridable. */}}
{{- define "dot-proxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: the release name, plus the chart name when the release
name does not already contain it. Truncated to leave room for suffixes such as
"-config-overrides-15" within the 63 characters a label value and many names allow.
*/}}
{{- define "dot-proxy.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "dot-proxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "dot-proxy.labels" -}}
helm.sh/chart: {{ include "dot-proxy.chart" . }}
app.kubernetes.io/name: {{ include "dot-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: dot-proxy
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of the proxy DaemonSet (immutable once installed: keep them short). */}}
{{- define "dot-proxy.proxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dot-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end -}}

{{/* Selector labels of the operator Deployment. */}}
{{- define "dot-proxy.operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dot-proxy.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "dot-proxy.proxy.fullname" -}}
{{- include "dot-proxy.fullname" . -}}
{{- end -}}

{{- define "dot-proxy.operator.fullname" -}}
{{- printf "%s-operator" (include "dot-proxy.fullname" .) -}}
{{- end -}}

{{- define "dot-proxy.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create -}}
{{- default (include "dot-proxy.proxy.fullname" .) .Values.proxy.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.proxy.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "dot-proxy.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create -}}
{{- default (include "dot-proxy.operator.fullname" .) .Values.operator.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.operator.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The ConfigMap the operator writes the proxy configuration into (key config.yaml). The
override shards are "<this>-overrides-<i>".
*/}}
{{- define "dot-proxy.configMapName" -}}
{{- default (printf "%s-config" (include "dot-proxy.fullname" .)) .Values.config.configMapName -}}
{{- end -}}

{{/* An image reference: repository:tag, or repository@digest when a digest is given. */}}
{{- define "dot-proxy.image" -}}
{{- $img := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $img.digest -}}
{{- printf "%s@%s" $img.repository $img.digest -}}
{{- else -}}
{{- printf "%s:%s" $img.repository (default $root.Chart.AppVersion $img.tag) -}}
{{- end -}}
{{- end -}}

{{/* "ip:port" with brackets around IPv6 addresses. */}}
{{- define "dot-proxy.hostPort" -}}
{{- $ip := index . 0 -}}
{{- $port := index . 1 -}}
{{- if contains ":" $ip -}}
{{- printf "[%s]:%v" $ip $port -}}
{{- else -}}
{{- printf "%s:%v" $ip $port -}}
{{- end -}}
{{- end -}}

{{/* The node-local addresses (IPv4 first, then IPv6 when set), as a JSON list. */}}
{{- define "dot-proxy.nodeLocalAddresses" -}}
{{- $out := list -}}
{{- with .Values.nodeLocal.ipv4Address }}{{ $out = append $out . }}{{ end -}}
{{- with .Values.nodeLocal.ipv6Address }}{{ $out = append $out . }}{{ end -}}
{{- toJson $out -}}
{{- end -}}

{{/*
The addresses the proxy serves DNS on, as a JSON list of "ip:port": config.listen when set,
else the node-local addresses. Rendering fails when there is neither.
*/}}
{{- define "dot-proxy.listen" -}}
{{- if .Values.config.listen -}}
{{- toJson .Values.config.listen -}}
{{- else if .Values.nodeLocal.enabled -}}
{{- $out := list -}}
{{- range (include "dot-proxy.nodeLocalAddresses" . | fromJsonArray) -}}
{{- $out = append $out (include "dot-proxy.hostPort" (list . $.Values.nodeLocal.port)) -}}
{{- end -}}
{{- toJson $out -}}
{{- else -}}
{{- fail "config.listen must list the addresses to serve DNS on when nodeLocal.enabled is false" -}}
{{- end -}}
{{- end -}}

{{/*
Capabilities of the node-local container. NET_ADMIN creates the dummy interface and the
conntrack-bypass rules. NET_RAW is needed only by the iptables-legacy tools, which open a
raw socket to talk to the kernel; nftables (and iptables-nft) use netlink and need no more
than NET_ADMIN.
*/}}
{{- define "dot-proxy.nodeLocal.capabilities" -}}
{{- /* NET_BIND_SERVICE is not used by node-local, but the image's binary carries it as a
       file capability (for the non-root proxy), and the kernel refuses to exec a binary
       whose file capabilities are outside the bounding set. */ -}}
{{- $caps := list "NET_ADMIN" "NET_BIND_SERVICE" -}}
{{- if or (eq .Values.nodeLocal.firewall "iptables") (eq .Values.nodeLocal.firewall "auto") -}}
{{- $caps = append $caps "NET_RAW" -}}
{{- end -}}
{{- toJson $caps -}}
{{- end -}}

{{/* Whether the node-local container may run iptables, which locks /run/xtables.lock. */}}
{{- define "dot-proxy.nodeLocal.usesIptables" -}}
{{- if or (eq .Values.nodeLocal.firewall "iptables") (eq .Values.nodeLocal.firewall "auto") -}}true{{- end -}}
{{- end -}}

{{/*
checkov skip annotations from a map of check id -> reason. checkov splits the value on "="
and takes the part after it as the reason, so a reason must not contain "=".
*/}}
{{- define "dot-proxy.checkovSkips" -}}
{{- $lines := list -}}
{{- range $id, $reason := . -}}
{{- $lines = append $lines (printf "checkov.io/skip%d: %s" (add1 (len $lines)) (printf "%s=%s" $id $reason | quote)) -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{/*
Override shards the proxies mount: the most the operator may grow to,
max(operator.overrideShards, operator.maxOverrideShards), at most 64.
*/}}
{{- define "dot-proxy.mountedShards" -}}
{{- $base := int .Values.operator.overrideShards -}}
{{- $max := int (.Values.operator.maxOverrideShards | default $base) -}}
{{- min 64 (max $base $max) -}}
{{- end }}
