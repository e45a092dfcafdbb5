{{/*
Names, labels and the pieces every ebb container shares.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "ebb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name prefix of every object: fullnameOverride, else <release>-<chart> (or the
release name when it contains the chart name). Kept at 50 characters so that
"<fullname>-keda-scaler" fits in a 63-character DNS label.
*/}}
{{- define "ebb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "ebb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels every object of the release carries. */}}
{{- define "ebb.commonLabels" -}}
helm.sh/chart: {{ include "ebb.chart" . }}
app.kubernetes.io/name: {{ include "ebb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "ebb.imageTag" . | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: ebb
{{- end -}}

{{/* Labels of one component's objects: (dict "root" $ "component" "consumer"). */}}
{{- define "ebb.labels" -}}
{{ include "ebb.commonLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "consumer"). */}}
{{- define "ebb.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ebb.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The service account ebb's pods run as. */}}
{{- define "ebb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ebb.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false (the default service account should not run ebb)" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The image tag: image.tag, else the chart's appVersion. */}}
{{- define "ebb.imageTag" -}}
{{- default .Chart.AppVersion .Values.image.tag -}}
{{- end -}}

{{/* repository:tag, or repository:tag@digest. */}}
{{- define "ebb.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (include "ebb.imageTag" .) -}}
{{- with .Values.image.digest -}}
{{- $ref = printf "%s@%s" $ref . -}}
{{- end -}}
{{- $ref -}}
{{- end -}}

{{/* The SASL mechanism (KAFKA_SASL_MECHANISM) of kafka.auth.type, empty without SASL. */}}
{{- define "ebb.saslMechanism" -}}
{{- get (dict "plain" "PLAIN" "scram-sha-256" "SCRAM-SHA-256" "scram-sha-512" "SCRAM-SHA-512" "msk-iam" "AWS_MSK_IAM") .Values.kafka.auth.type -}}
{{- end -}}

{{/* "true" when kafka.auth.type is a user name and password SASL mechanism. */}}
{{- define "ebb.saslPassword" -}}
{{- if has .Values.kafka.auth.type (list "plain" "scram-sha-256" "scram-sha-512") -}}true{{- end -}}
{{- end -}}

{{/* The Kafka security protocol (KAFKA_SECURITY_PROTOCOL) for kafka.auth.type. */}}
{{- define "ebb.securityProtocol" -}}
{{- $auth := .Values.kafka.auth -}}
{{- if eq $auth.type "none" -}}plaintext
{{- else if eq $auth.type "tls" -}}ssl
{{- else if include "ebb.saslPassword" . -}}{{ ternary "sasl_ssl" "sasl_plaintext" $auth.tls }}
{{- else if eq $auth.type "msk-iam" -}}sasl_ssl
{{- else -}}{{ fail (printf "kafka.auth.type %q: use none, tls, plain, scram-sha-256, scram-sha-512 or msk-iam" $auth.type) }}
{{- end -}}
{{- end -}}

{{/* "true" when Kafka traffic is TLS. */}}
{{- define "ebb.kafkaTls" -}}
{{- $p := include "ebb.securityProtocol" . -}}
{{- if or (eq $p "ssl") (eq $p "sasl_ssl") -}}true{{- end -}}
{{- end -}}

{{/* Mount path of the Kafka CA bundle. */}}
{{- define "ebb.caDir" -}}/etc/ebb/kafka-ca{{- end -}}

{{/* Mount path of the SASL user name and password (files username, password). */}}
{{- define "ebb.saslDir" -}}/etc/ebb/kafka-sasl{{- end -}}

{{/*
Checks that hold for the whole release; included once by every workload template, so
`helm template` stops with one clear line instead of rendering something that cannot work.
*/}}
{{- define "ebb.validate" -}}
{{- $v := .Values -}}
{{- $auth := $v.kafka.auth -}}
{{- if not $v.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers is empty: give the brokers as host:port[,host:port...]" -}}
{{- end -}}
{{- if contains "${" $v.kafka.bootstrapServers -}}
{{- fail "kafka.bootstrapServers contains a ${...} placeholder: neither Helm nor KEDA expands it; give the brokers literally" -}}
{{- end -}}
{{- if contains "${" (toString $v.scaling.kedaLag.bootstrapServers) -}}
{{- fail "scaling.kedaLag.bootstrapServers contains a ${...} placeholder, which KEDA does not expand (it fails with \"missing port in address\"); leave it empty to use KAFKA_BOOTSTRAP_SERVERS from the consumer's env" -}}
{{- end -}}
{{- $_ := include "ebb.securityProtocol" . -}}
{{- if and (include "ebb.saslPassword" .) (not $auth.existingSecret) -}}
{{- fail (printf "kafka.auth.type %s needs kafka.auth.existingSecret: the name of a Secret with the user name and password (the chart never holds credentials)" $auth.type) -}}
{{- end -}}
{{- if and (eq $auth.type "msk-iam") (not $auth.awsRegion) -}}
{{- fail "kafka.auth.type msk-iam needs kafka.auth.awsRegion (AWS_REGION), e.g. us-east-1" -}}
{{- end -}}
{{- if and (eq $auth.type "msk-iam") (eq $auth.kedaIdentityOwner "workload") $auth.kedaRoleArn -}}
{{- fail "kafka.auth.kedaRoleArn can only be used with kedaIdentityOwner keda (KEDA refuses roleArn with identityOwner workload)" -}}
{{- end -}}
{{- if and (eq $auth.type "msk-iam") (eq $auth.kedaIdentityOwner "workload") (eq $v.scaling.mode "keda-lag") (not (or $v.serviceAccount.irsaRoleArn (index $v.serviceAccount.annotations "eks.amazonaws.com/role-arn"))) -}}
{{- fail "kafka.auth.kedaIdentityOwner workload makes KEDA assume the role in the service account's eks.amazonaws.com/role-arn annotation: set serviceAccount.irsaRoleArn" -}}
{{- end -}}
{{- if and (eq $v.consumer.sink.type "postgres") (not $v.consumer.sink.postgres.existingSecret) -}}
{{- fail "consumer.sink.type postgres needs consumer.sink.postgres.existingSecret: a Secret holding the database URL under consumer.sink.postgres.urlKey" -}}
{{- end -}}
{{- if and $v.consumer.sink.postgres.rootCert.secretName $v.consumer.sink.postgres.rootCert.configMapName -}}
{{- fail "consumer.sink.postgres.rootCert: set secretName or configMapName, not both" -}}
{{- end -}}
{{- if gt (int $v.scaling.minReplicaCount) (int $v.scaling.maxReplicaCount) -}}
{{- fail (printf "scaling.minReplicaCount (%v) is greater than scaling.maxReplicaCount (%v)" $v.scaling.minReplicaCount $v.scaling.maxReplicaCount) -}}
{{- end -}}
{{- if and $v.monitoring.podMonitor.enabled $v.monitoring.serviceMonitor.enabled -}}
{{- fail "monitoring.podMonitor.enabled and monitoring.serviceMonitor.enabled are both true: every series would be scraped twice; enable one" -}}
{{- end -}}
{{- if and (eq $v.scaling.mode "ebb-rate") (not $v.kedaScaler.enabled) (not $v.scaling.ebbRate.scalerAddress) -}}
{{- fail "scaling.mode ebb-rate needs a scaler: keep kedaScaler.enabled true or set scaling.ebbRate.scalerAddress (host:port)" -}}
{{- end -}}
{{- if eq (include "ebb.imageTag" .) "latest" -}}
{{- fail "image.tag latest is not a release: pin a version (or set image.digest)" -}}
{{- end -}}
{{- end -}}

{{/*
terminationGracePeriodSeconds of a workload: (dict "timeout" <s> "margin" <s> "explicit" <s|nil> "what" "consumer").
The explicit value if set, else timeout + margin; fails when it would not outlast the timeout.
*/}}
{{- define "ebb.gracePeriod" -}}
{{- $timeout := int .timeout -}}
{{- $grace := 0 -}}
{{- if kindIs "invalid" .explicit -}}
{{- $grace = add $timeout (int .margin) -}}
{{- else -}}
{{- $grace = int .explicit -}}
{{- end -}}
{{- if le (int $grace) $timeout -}}
{{- fail (printf "%s: terminationGracePeriodSeconds (%d) must be greater than the shutdown timeout (%d s, %s), or the kubelet kills ebb before it has finished its in-flight batches and committed; raise it or lower the timeout" .what (int $grace) $timeout .timeoutKey) -}}
{{- end -}}
{{- $grace -}}
{{- end -}}

{{/* Env of every ebb container: logging and the Kafka connection. */}}
{{- define "ebb.kafkaEnv" -}}
{{- $v := .Values -}}
{{- $auth := $v.kafka.auth -}}
- name: EBB_LOG
  value: {{ $v.logLevel | quote }}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ $v.kafka.bootstrapServers | quote }}
- name: KAFKA_TOPIC
  value: {{ $v.kafka.topic | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ include "ebb.securityProtocol" . | quote }}
- name: KAFKA_REQUEST_TIMEOUT
  value: {{ $v.kafka.requestTimeout | quote }}
{{- with include "ebb.saslMechanism" . }}
- name: KAFKA_SASL_MECHANISM
  value: {{ . | quote }}
{{- end }}
{{- if include "ebb.saslPassword" . }}
{{- /* Read from the Secret mounted as files (ebb.volumes), never as env values. */}}
- name: KAFKA_SASL_USERNAME_FILE
  value: {{ printf "%s/username" (include "ebb.saslDir" .) | quote }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: {{ printf "%s/password" (include "ebb.saslDir" .) | quote }}
{{- else if eq $auth.type "msk-iam" }}
- name: AWS_REGION
  value: {{ $auth.awsRegion | quote }}
{{- end }}
{{- if $v.kafka.tls.caSecret.name }}
- name: KAFKA_SSL_CA_LOCATION
  value: {{ printf "%s/%s" (include "ebb.caDir" .) $v.kafka.tls.caSecret.key | quote }}
{{- end }}
{{- end -}}

{{/* `-X key=value` arguments for kafka.properties. */}}
{{- define "ebb.kafkaPropertyArgs" -}}
{{- range $key, $value := .Values.kafka.properties }}
- "-X"
- {{ printf "%s=%v" $key $value | quote }}
{{- end }}
{{- end -}}

{{/* NAME: value map to env entries. */}}
{{- define "ebb.envMap" -}}
{{- range $name, $value := . }}
- name: {{ $name | quote }}
  value: {{ toString $value | quote }}
{{- end }}
{{- end -}}

{{/*
Volumes every ebb pod has: a writable /tmp, the Kafka CA when given, and the SASL
credentials' Secret (read-only files) for the user name and password types.
*/}}
{{- define "ebb.volumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- if include "ebb.saslPassword" . }}
- name: kafka-sasl
  secret:
    secretName: {{ .Values.kafka.auth.existingSecret | quote }}
    defaultMode: 0440
    items:
      - key: {{ .Values.kafka.auth.usernameKey | quote }}
        path: username
      - key: {{ .Values.kafka.auth.passwordKey | quote }}
        path: password
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret.name | quote }}
    defaultMode: 0444
    items:
      - key: {{ .Values.kafka.tls.caSecret.key | quote }}
        path: {{ .Values.kafka.tls.caSecret.key | quote }}
{{- end }}
{{- end -}}

{{- define "ebb.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
{{- if include "ebb.saslPassword" . }}
- name: kafka-sasl
  mountPath: {{ include "ebb.saslDir" . }}
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: {{ include "ebb.caDir" . }}
  readOnly: true
{{- end }}
{{- end -}}

{{/*
checkov skip annotations for a workload, each with its reason, only for the checks the
current values make fail: (dict "root" $). No secret reaches a container as an env value
(Secrets are mounted as files and ebb reads *_FILE), so CKV_K8S_35 needs no skip.
*/}}
{{- define "ebb.checkovSkips" -}}
{{- $root := .root -}}
{{- $n := 0 -}}
{{- if not $root.Values.image.digest }}
{{- $n = add1 $n }}
checkov.io/skip{{ $n }}: {{ printf "CKV_K8S_43=The image is pinned by an immutable release tag (%s); set image.digest to pin it by digest as well" (include "ebb.imageTag" $root) | quote }}
{{- end }}
{{- if ne $root.Values.image.pullPolicy "Always" }}
{{- $n = add1 $n }}
checkov.io/skip{{ $n }}: {{ printf "CKV_K8S_15=image.pullPolicy %s chosen on purpose (pinned tag or digest, or an image loaded into the nodes); Always is the chart's default" $root.Values.image.pullPolicy | quote }}
{{- end }}
{{- if not $root.Values.networkPolicy.enabled }}
{{- $n = add1 $n }}
checkov.io/skip{{ $n }}: "CKV2_K8S_6=networkPolicy.enabled is false on purpose: the cluster's own NetworkPolicies govern these pods"
{{- end }}
{{- end -}}

{{/* The HTTP probes of an ebb container: (dict "port" "metrics" "liveness" {...} "readiness" {...}). */}}
{{- define "ebb.probes" -}}
livenessProbe:
  httpGet:
    path: /healthz
    port: {{ .port }}
  {{- toYaml .liveness | nindent 2 }}
readinessProbe:
  httpGet:
    path: /readyz
    port: {{ .port }}
  {{- toYaml .readiness | nindent 2 }}
{{- end -}}

{{/* "true" when the keda-lag trigger needs a TriggerAuthentication (SASL, MSK IAM or a private CA). */}}
{{- define "ebb.triggerAuthNeeded" -}}
{{- if eq .Values.scaling.mode "keda-lag" -}}
{{- if or (include "ebb.saslPassword" .) (eq .Values.kafka.auth.type "msk-iam") .Values.kafka.tls.caSecret.name -}}true{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Relabelings of the PodMonitor and ServiceMonitor: every series of this release's targets
carries the topic and the consumer group it works on, as the target labels `topic` and
`consumer_group`, which ebb's dashboard (deploy/grafana/ebb.json) and alerts
(_prometheus-rules.tpl) select and group by. ebb's own metrics carry neither.
*/}}
{{- define "ebb.kafkaTargetLabels" -}}
- action: replace
  targetLabel: topic
  replacement: {{ .Values.kafka.topic | quote }}
- action: replace
  targetLabel: consumer_group
  replacement: {{ .Values.kafka.consumerGroup | quote }}
{{- end -}}
