{{/* Names, labels and the pieces every asyncwebrl pod shares. */}}

{{- define "asyncwebrl.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<chart>, or the release alone when it already names the chart; at most 40 characters so
     that "<fullname>-<component>-<suffix>" stays a DNS label. */}}
{{- define "asyncwebrl.fullname" -}}
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

{{- define "asyncwebrl.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: (dict "ctx" $ "component" "envfleet"). */}}
{{- define "asyncwebrl.selectorLabels" -}}
app.kubernetes.io/name: {{ include "asyncwebrl.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every label of a component's objects: (dict "ctx" $ "component" "envfleet"). */}}
{{- define "asyncwebrl.labels" -}}
{{ include "asyncwebrl.selectorLabels" . }}
app.kubernetes.io/part-of: asyncwebrl
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ include "asyncwebrl.chart" .ctx }}
{{- end -}}

{{/* Labels of objects that belong to no one component. */}}
{{- define "asyncwebrl.commonLabels" -}}
{{ include "asyncwebrl.labels" (dict "ctx" . "component" "shared") }}
{{- end -}}

{{/* An image reference: (dict "ctx" $ "image" .Values.envfleet.image). */}}
{{- define "asyncwebrl.image" -}}
{{- $tag := .image.tag | default .ctx.Values.images.tag | default .ctx.Chart.AppVersion -}}
{{- if .ctx.Values.images.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" .ctx.Values.images.registry) .image.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "asyncwebrl.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "asyncwebrl.fullname" .) -}}
{{- end -}}

{{- define "asyncwebrl.checkpointsClaim" -}}
{{- .Values.checkpoints.existingClaim | default (printf "%s-checkpoints" (include "asyncwebrl.fullname" .)) -}}
{{- end -}}

{{- define "asyncwebrl.jobsServiceAccount" -}}
{{- if .Values.jobs.serviceAccount.create -}}
{{- .Values.jobs.serviceAccount.name | default (printf "%s-job" (include "asyncwebrl.fullname" .)) -}}
{{- else -}}
{{- .Values.jobs.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The services' default ports (the launcher's per-job pods use the same numbers; "inference" is the
     HTTP port of its inference pods, asyncwebrl.api.k8s_manifests.ENGINE_PORT: API and /metrics; "rollout"
     and "trainer" the metrics ports of the jobs' gateways and trainers, k8s_manifests.PORTS). */}}
{{- define "asyncwebrl.grpcPort" -}}
{{- get (dict "envfleet" 50061 "buffer" 50062 "weightsync" 50065 "api" 50070) . -}}
{{- end -}}
{{- define "asyncwebrl.httpPort" -}}
{{- get (dict "envfleet" 9461 "buffer" 9462 "weightsync" 9465 "api" 9470 "inference" 30000 "rollout" 9463 "trainer" 9464) . -}}
{{- end -}}

{{/* host:port of a component's gRPC Service, resolvable from any namespace. */}}
{{- define "asyncwebrl.target" -}}
{{- printf "%s-%s.%s.svc:%s" (include "asyncwebrl.fullname" .ctx) .component .ctx.Release.Namespace (include "asyncwebrl.grpcPort" .component) -}}
{{- end -}}

{{- define "asyncwebrl.redisURL" -}}
{{- if .Values.redis.external.url -}}
{{- .Values.redis.external.url -}}
{{- else -}}
{{- printf "redis://%s-redis.%s.svc:6379/0" (include "asyncwebrl.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/* The Redis port envfleet's NetworkPolicy opens: the external URL's, else 6379. */}}
{{- define "asyncwebrl.redisPort" -}}
{{- $port := "" -}}
{{- if .Values.redis.external.url -}}
{{- $port = regexFind "[0-9]+$" (regexFind ":[0-9]+$" (urlParse .Values.redis.external.url).host) -}}
{{- end -}}
{{- $port | default "6379" -}}
{{- end -}}

{{/* The one place the chart names the labels the api's launcher puts on the job pods it creates
     (asyncwebrl.api.k8s.labels: part-of, managed-by = k8s.MANAGER, component = k8s.ROLES[role],
     asyncwebrl.io/role = k8s.ROLE_LABEL). (dict) selects every job pod, (dict "role" "rollout") the pods
     of one role (the RL gateway, not the warm-start one), (dict "component" "rollout") of a component. */}}
{{- define "asyncwebrl.jobPodLabels" -}}
app.kubernetes.io/part-of: asyncwebrl
app.kubernetes.io/managed-by: asyncwebrl-api
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- with .role }}
asyncwebrl.io/role: {{ . }}
{{- end }}
{{- end -}}

{{/* Redis's clients: this release's api, buffer and weightsync, and the api's job pods (trainers and
     gateways: --redis-url; embedded engines: their registry). Not envfleet: browsers never reach Redis. */}}
{{- define "asyncwebrl.np.redisClients" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
      app.kubernetes.io/part-of: asyncwebrl
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: [api, buffer, weightsync]
- podSelector:
    matchLabels:
      {{- include "asyncwebrl.jobPodLabels" (dict) | nindent 6 }}
{{- end -}}

{{/* A secret environment variable: (dict "ctx" $ "name" "ASYNCWEBRL_AUTH_TOKEN" "key" "auth-token"). */}}
{{- define "asyncwebrl.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "asyncwebrl.secretName" .ctx }}
      key: {{ .key }}
      optional: {{ .optional | default false }}
{{- end -}}

{{/* Environment every service reads: bind address, ports, logs, Redis and its key prefix (unless noRedis:
     envfleet, which stores screenshots through the buffer) and the shared gRPC token.
     (dict "ctx" $ "component" "buffer" "grace" .Values.buffer.shutdownGraceS) */}}
{{- define "asyncwebrl.serviceEnv" -}}
- name: ASYNCWEBRL_HOST
  value: "0.0.0.0"
- name: ASYNCWEBRL_GRPC_PORT
  value: {{ include "asyncwebrl.grpcPort" .component | quote }}
- name: ASYNCWEBRL_HTTP_PORT
  value: {{ include "asyncwebrl.httpPort" .component | quote }}
- name: ASYNCWEBRL_LOG_FORMAT
  value: json
- name: ASYNCWEBRL_LOG_LEVEL
  value: {{ .ctx.Values.common.logLevel | quote }}
- name: ASYNCWEBRL_SHUTDOWN_GRACE_S
  value: {{ .grace | quote }}
{{- if not .noRedis }}
- name: ASYNCWEBRL_KEY_PREFIX
  value: {{ .ctx.Values.common.keyPrefix | quote }}
- name: ASYNCWEBRL_REDIS_URL
  value: {{ include "asyncwebrl.redisURL" .ctx | quote }}
{{ include "asyncwebrl.secretEnv" (dict "ctx" .ctx "name" "ASYNCWEBRL_REDIS_PASSWORD" "key" "redis-password") }}
{{- end }}
{{ include "asyncwebrl.secretEnv" (dict "ctx" .ctx "name" "ASYNCWEBRL_AUTH_TOKEN" "key" "auth-token") }}
# A read-only root: caches and temporary files go to the /tmp emptyDir.
- name: HOME
  value: /tmp
- name: PYTHONDONTWRITEBYTECODE
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- end -}}

{{- define "asyncwebrl.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.common.runAsUser }}
runAsGroup: {{ .Values.common.runAsUser }}
fsGroup: {{ .Values.common.runAsUser }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "asyncwebrl.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
{{- end -}}

{{/* Probes of a gRPC service: startup and liveness on grpc.health.v1 (the process answers), readiness on
     /readyz (it can take work: its browsers or Redis are up; grpc.health.v1 only turns NOT_SERVING at
     shutdown). (dict "component" "envfleet" "startupSeconds" 120) */}}
{{- define "asyncwebrl.probes" -}}
startupProbe:
  grpc:
    port: {{ include "asyncwebrl.grpcPort" .component }}
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: {{ div (.startupSeconds | default 120) 5 }}
livenessProbe:
  grpc:
    port: {{ include "asyncwebrl.grpcPort" .component }}
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 6
readinessProbe:
  httpGet:
    path: /readyz
    port: metrics
  periodSeconds: 5
  timeoutSeconds: 3
  failureThreshold: 2
{{- end -}}

{{/* Container ports of a gRPC service. */}}
{{- define "asyncwebrl.ports" -}}
- name: grpc
  containerPort: {{ include "asyncwebrl.grpcPort" . }}
  protocol: TCP
- name: metrics
  containerPort: {{ include "asyncwebrl.httpPort" . }}
  protocol: TCP
{{- end -}}

{{/* nodeSelector, tolerations and affinity of a component's pods. */}}
{{- define "asyncwebrl.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "asyncwebrl.pullSecrets" -}}
{{- with .Values.images.pullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Ranges a browser may never reach: private (RFC 1918), link-local (169.254.169.254, the cloud metadata
     endpoint), CGNAT, loopback, "this network", multicast and reserved; then the values' extras. */}}
{{- define "asyncwebrl.blockedIPv4" -}}
{{- $always := list "10.0.0.0/8" "172.16.0.0/12" "192.168.0.0/16" "169.254.0.0/16" "100.64.0.0/10" "127.0.0.0/8" "0.0.0.0/8" "192.0.0.0/24" "198.18.0.0/15" "224.0.0.0/4" "240.0.0.0/4" -}}
{{- $extra := list -}}
{{- range .Values.networkPolicy.envfleet.extraBlockedCIDRs }}{{ if not (contains ":" .) }}{{ $extra = append $extra . }}{{ end }}{{ end -}}
{{- concat $always $extra | uniq | toJson -}}
{{- end -}}

{{- define "asyncwebrl.blockedIPv6" -}}
{{- $always := list "fc00::/7" "fe80::/10" "::1/128" "::ffff:0:0/96" "64:ff9b::/96" "64:ff9b:1::/48" "2001:db8::/32" "ff00::/8" "fec0::/10" -}}
{{- $extra := list -}}
{{- range .Values.networkPolicy.envfleet.extraBlockedCIDRs }}{{ if contains ":" . }}{{ $extra = append $extra . }}{{ end }}{{ end -}}
{{- concat $always $extra | uniq | toJson -}}
{{- end -}}

{{/* Whether to render the Prometheus operator's objects. */}}
{{- define "asyncwebrl.prometheusOperator" -}}
{{- $mode := .Values.monitoring.prometheusOperator | toString -}}
{{- if and .Values.monitoring.enabled (or (eq $mode "true") (and (eq $mode "auto") (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1"))) -}}
true
{{- end -}}
{{- end -}}

{{/* A DNS-label form of a file's base name: "Buffer_Overview.json" -> "buffer-overview". */}}
{{- define "asyncwebrl.fileLabel" -}}
{{- regexReplaceAll "[^a-z0-9-]+" (base . | trimSuffix (ext .) | lower) "-" | trunc 40 | trimAll "-" -}}
{{- end -}}

{{/* --- NetworkPolicy pieces: every pod is under the default deny (networkpolicy-default-deny.yaml); each
     component's policy lists its few edges with these. --- */}}

{{/* Egress to the cluster DNS (and networkPolicy.dns.extraCIDRs) on 53. */}}
{{- define "asyncwebrl.np.dnsEgress" -}}
{{- $np := .Values.networkPolicy -}}
# The cluster DNS.
- to:
    - namespaceSelector:
        matchLabels:
          {{- toYaml $np.dns.namespaceSelector | nindent 10 }}
      podSelector:
        matchLabels:
          {{- toYaml $np.dns.podSelector | nindent 10 }}
    {{- range $np.dns.extraCIDRs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
{{- end -}}

{{/* Egress to Redis: the chart's pod on 6379, or an external Redis at redis.external.egressCIDRs on its
     URL's port (none listed: no rule, and NOTES.txt says so). */}}
{{- define "asyncwebrl.np.redisEgress" -}}
{{- if not .Values.redis.external.url }}
# Redis.
- to:
    - podSelector:
        matchLabels:
          {{- include "asyncwebrl.selectorLabels" (dict "ctx" . "component" "redis") | nindent 10 }}
  ports:
    - port: 6379
      protocol: TCP
{{- else if .Values.redis.external.egressCIDRs }}
# The external Redis (redis.external.egressCIDRs).
- to:
    {{- range .Values.redis.external.egressCIDRs }}
    - ipBlock:
        cidr: {{ . }}
    {{- end }}
  ports:
    - port: {{ include "asyncwebrl.redisPort" . | int }}
      protocol: TCP
{{- end }}
{{- end -}}

{{/* Egress to the gRPC port of chart components: (dict "ctx" $ "components" (list "buffer" "weightsync")). */}}
{{- define "asyncwebrl.np.grpcEgress" -}}
{{- $ctx := .ctx -}}
{{- range .components }}
# {{ . }}'s gRPC.
- to:
    - podSelector:
        matchLabels:
          {{- include "asyncwebrl.selectorLabels" (dict "ctx" $ctx "component" .) | nindent 10 }}
  ports:
    - port: {{ include "asyncwebrl.grpcPort" . }}
      protocol: TCP
{{- end }}
{{- end -}}

{{/* Egress to the Kubernetes API server (networkPolicy.kubeAPI; 169.254.0.0/16 excepted from a range holding it). */}}
{{- define "asyncwebrl.np.kubeAPIEgress" -}}
{{- $k := .Values.networkPolicy.kubeAPI -}}
{{- if $k.cidrs }}
# The Kubernetes API server (networkPolicy.kubeAPI).
- to:
    {{- range $k.cidrs }}
    {{- include "asyncwebrl.np.ipBlock" (dict "cidr" . "blocked" (list "169.254.0.0/16") "field" "networkPolicy.kubeAPI.cidrs") | nindent 4 }}
    {{- end }}
  ports:
    {{- range $k.ports }}
    - port: {{ . | int }}
      protocol: TCP
    {{- end }}
{{- end }}
{{- end -}}

{{/* Ingress from networkPolicy.metrics.scrapeFrom on a metrics port: (dict "ctx" $ "port" 9461). */}}
{{- define "asyncwebrl.np.scrapeIngress" -}}
{{- with .ctx.Values.networkPolicy.metrics.scrapeFrom }}
# Metrics, for Prometheus (networkPolicy.metrics.scrapeFrom).
- from:
    {{- toYaml . | nindent 4 }}
  ports:
    - port: {{ $.port | int }}
      protocol: TCP
{{- end }}
{{- end -}}

{{/* A peer selecting the chart's pods of a component: (dict "ctx" $ "component" "api"). */}}
{{- define "asyncwebrl.np.componentPeer" -}}
- podSelector:
    matchLabels:
      {{- include "asyncwebrl.selectorLabels" . | nindent 6 }}
{{- end -}}

{{/* A peer selecting the api's job pods of some components: (dict "components" (list "rollout" "trainer")). */}}
{{- define "asyncwebrl.np.jobPeer" -}}
- podSelector:
    matchLabels:
      {{- include "asyncwebrl.jobPodLabels" (dict) | nindent 6 }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: {{ toJson .components }}
{{- end -}}

{{/* IPv4 a.b.c.d/p as "start size" (integers: the range's first address, aligned, and its length). */}}
{{- define "asyncwebrl.ipv4Span" -}}
{{- $parts := splitList "/" . -}}
{{- $n := 0 -}}
{{- range splitList "." (first $parts) }}{{ $n = add (mul $n 256) (atoi .) }}{{ end -}}
{{- $size := 1 -}}
{{- range until (sub 32 (atoi (last $parts)) | int) }}{{ $size = mul $size 2 }}{{ end -}}
{{- printf "%d %d" (mul (div $n $size) $size) $size -}}
{{- end -}}

{{/* An ipBlock peer for a CIDR, excepting each blocked IPv4 range strictly inside it; a CIDR inside (or equal
     to) a blocked range is refused, naming the field. IPv6 CIDRs pass as they are.
     (dict "cidr" "0.0.0.0/0" "blocked" (list ...) "field" "networkPolicy.envfleet.siteCIDRs") */}}
{{- define "asyncwebrl.np.ipBlock" -}}
{{- $except := list -}}
{{- if not (contains ":" .cidr) -}}
{{- $s := splitList " " (include "asyncwebrl.ipv4Span" .cidr) -}}
{{- $start := atoi (first $s) | int64 -}}{{- $size := atoi (last $s) | int64 -}}
{{- range .blocked -}}
{{- if not (contains ":" .) -}}
{{- $b := splitList " " (include "asyncwebrl.ipv4Span" .) -}}
{{- $bstart := atoi (first $b) | int64 -}}{{- $bsize := atoi (last $b) | int64 -}}
{{- if and (ge $start $bstart) (lt $start (add $bstart $bsize)) (le $size $bsize) -}}
{{- fail (printf "%s: %s is inside the blocked range %s" $.field $.cidr .) -}}
{{- end -}}
{{- if and (ge $bstart $start) (lt $bstart (add $start $size)) (lt $bsize $size) -}}
{{- $except = append $except . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
- ipBlock:
    cidr: {{ .cidr }}
    {{- with $except }}
    except: {{ toJson . }}
    {{- end }}
{{- end -}}

{{/* The pod-template annotation that rolls a component's pods when the Secret changes. With
     secrets.existingSecret the chart does not see that Secret's content: the annotation hashes its name
     only (restart the pods yourself after changing it, e.g. kubectl rollout restart). */}}
{{- define "asyncwebrl.checksumAnnotations" -}}
{{- if .Values.secrets.existingSecret -}}
checksum/secret: {{ .Values.secrets.existingSecret | sha256sum }}
{{- else -}}
checksum/secret: {{ include (print .Template.BasePath "/secret.yaml") . | sha256sum }}
{{- end -}}
{{- end -}}
