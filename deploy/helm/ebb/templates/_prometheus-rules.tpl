{{/*
ebb's alerting rules: the `spec` of the PrometheusRule (prometheusrule.yaml) and, rendered
with the chart's default values, the plain Prometheus rules file
deploy/prometheus/ebb-rules.yaml (crates/ebb/tests/real/observability.rs checks that the two are
the same and rewrites the plain file with EBB_UPDATE_RULES=1). Edit the rules here.

Every expression uses only metrics ebb exports (the consumer's, the producer's) and, for
replicas and readiness, kube-state-metrics'. `namespace` is the target label Prometheus adds;
`topic` and `consumer_group` are the target labels the chart's PodMonitor and ServiceMonitor
add (kafka.topic, kafka.consumerGroup). Without them the rules still work, grouped by
namespace alone.
*/}}
{{- define "ebb.prometheusRules" -}}
{{- $r := .Values.monitoring.prometheusRule -}}
{{- $alertLabels := $r.alertLabels -}}
# ebb's alerts, for Prometheus 2.x and 3.x. Each has a unit test in deploy/prometheus/tests/
# (promtool test rules). Generated from deploy/helm/ebb/templates/_prometheus-rules.tpl with
# the chart's default values: edit the template, then run the observability tests with
# EBB_UPDATE_RULES=1 to write deploy/prometheus/ebb-rules.yaml again.
groups:
  - name: ebb
    rules:
      # The backlog grows while scaling cannot add capacity: KEDA's HPA is at its
      # maxReplicas (kube-state-metrics, matched to the consumers' Deployment through the
      # pod names), or every partition already has its own consumer (more would idle).
      - alert: EbbConsumerLagGrowingAtMaxReplicas
        expr: |
          (
            deriv((
              sum by (namespace, topic, consumer_group) (
                max by (namespace, topic, consumer_group, partition) (ebb_consumer_partition_lag)
              )
            )[10m:30s]) > 0
          )
          and on (namespace, topic, consumer_group)
          (
              (
                  count by (namespace, topic, consumer_group) (ebb_consumer_assigned_partitions > 0)
                >=
                  count by (namespace, topic, consumer_group) (
                    max by (namespace, topic, consumer_group, partition) (ebb_consumer_partition_lag)
                  )
              )
            or
              max by (namespace, topic, consumer_group) (
                label_replace(ebb_consumer_assigned_partitions, "deployment", "$1", "pod", "(.+)-[a-z0-9]+-[a-z0-9]+")
                and on (namespace, deployment)
                label_replace(
                  kube_horizontalpodautoscaler_info
                  and on (namespace, horizontalpodautoscaler)
                  (
                      max by (namespace, horizontalpodautoscaler) (kube_horizontalpodautoscaler_status_current_replicas)
                    >=
                      max by (namespace, horizontalpodautoscaler) (kube_horizontalpodautoscaler_spec_max_replicas)
                  ),
                  "deployment", "$1", "scaletargetref_name", "(.+)"
                )
              )
          )
        for: 10m
        labels:
          severity: critical
          {{- with $alertLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ `Lag of {{ $labels.consumer_group }} on {{ $labels.topic }} grows and the consumers cannot scale further` | quote }}
          description: {{ `The lag of group {{ $labels.consumer_group }} on topic {{ $labels.topic }} (namespace {{ $labels.namespace }}) has grown for 10 minutes ({{ $value | humanize }} records/s) while KEDA's HPA is at maxReplicaCount or every partition has its own consumer. Raise maxReplicaCount or the partition count, or make each consumer faster (sink, batch size, --max-in-flight).` | quote }}

      # Records wait in Kafka longer than the SLA: the p99 of kafka_message_age_seconds (its
      # highest finite bucket is 32.768 s, so for longer SLAs the mean decides).
      - alert: EbbMessageTimeAboveSla
        expr: |
          (
            histogram_quantile(0.99,
              sum by (namespace, topic, consumer_group, le) (rate(kafka_message_age_seconds_bucket[5m]))
            ) > {{ $r.messageTimeSlaSeconds }}
          )
          or
          (
              sum by (namespace, topic, consumer_group) (rate(kafka_message_age_seconds_sum[5m]))
            /
              sum by (namespace, topic, consumer_group) (rate(kafka_message_age_seconds_count[5m]))
            > {{ $r.messageTimeSlaSeconds }}
          )
        for: 5m
        labels:
          severity: warning
          {{- with $alertLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ printf "Records of {{ $labels.topic }} wait in Kafka longer than the %v s SLA" $r.messageTimeSlaSeconds | quote }}
          description: {{ printf "Group {{ $labels.consumer_group }} on topic {{ $labels.topic }} (namespace {{ $labels.namespace }}) processes records {{ $value | humanizeDuration }} after they were produced (p99, or the mean when longer than the histogram's 32.768 s), above the SLA of %v s, for 5 minutes." $r.messageTimeSlaSeconds | quote }}

      # A partition with records waiting and none fetched, or handled records not
      # acknowledged as committed, for the stall timeout (the consumer's watchdog). A stalled
      # consumer answers /readyz 503 and exits if the stall does not heal, so a short stall
      # may already be over: any stall seen in the last 5 minutes fires.
      - alert: EbbPartitionStalled
        expr: |
          max by (namespace, topic, consumer_group, pod) (
            max_over_time(ebb_consumer_stalled_partitions[5m])
          ) > 0
        labels:
          severity: critical
          {{- with $alertLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ `{{ $labels.pod }} has a stalled partition of {{ $labels.topic }}` | quote }}
          description: {{ `Consumer {{ $labels.pod }} (group {{ $labels.consumer_group }}, topic {{ $labels.topic }}, namespace {{ $labels.namespace }}) reported {{ $value }} stalled partition(s) in the last 5 minutes: records waiting and none fetched, or commits not acknowledged, for the stall timeout. Its log names the partition and the kind (ebb_consumer_stalls_total{kind}).` | quote }}

      # Records that are not valid trades go to the dead-letter topic: any is worth a look.
      - alert: EbbDeadLetters
        expr: |
          sum by (namespace, topic, consumer_group) (rate(ebb_consumer_dead_lettered_total[5m])) > 0
        labels:
          severity: warning
          {{- with $alertLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ `Records of {{ $labels.topic }} go to the dead-letter topic` | quote }}
          description: {{ `Group {{ $labels.consumer_group }} (namespace {{ $labels.namespace }}) sends {{ $value | humanize }} records/s of topic {{ $labels.topic }} to its dead-letter topic (<topic>.dlq unless set): they are not valid trades. Each carries the error and its origin in the ebb.error and ebb.source.* headers.` | quote }}

      # A consumer pod not ready (kube-state-metrics) for 5 minutes: not in the group or
      # without its assignment, a stalled partition, a failing sink, or stopping.
      - alert: EbbConsumerNotReady
        expr: |
          (
            max by (namespace, pod) (kube_pod_container_status_ready{container="consumer"}) == 0
          )
          * on (namespace, pod) group_left (topic, consumer_group)
          max by (namespace, pod, topic, consumer_group) (
            present_over_time(ebb_consumer_assigned_partitions[15m])
          )
        for: 5m
        labels:
          severity: warning
          {{- with $alertLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ `Consumer {{ $labels.pod }} is not ready` | quote }}
          description: {{ `Consumer {{ $labels.pod }} (group {{ $labels.consumer_group }}, topic {{ $labels.topic }}, namespace {{ $labels.namespace }}) has answered /readyz with 503 for 5 minutes: it has not joined the group or got its assignment, a partition is stalled, its sink is failing, or it is stopping. Its log says which.` | quote }}

      # ebb produce sends less than its rate profile asks for.
      - alert: EbbProducerBehindTarget
        expr: |
          (ebb_producer_achieved_rate / ebb_producer_target_rate < {{ $r.producerMinRatio }})
          and
          ebb_producer_target_rate > 0
        for: 5m
        labels:
          severity: warning
          {{- with $alertLabels }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
        annotations:
          summary: {{ `Producer {{ $labels.pod }} is behind its target rate` | quote }}
          description: {{ printf "Producer {{ $labels.pod }} (topic {{ $labels.topic }}, namespace {{ $labels.namespace }}) sends {{ $value | humanizePercentage }} of the rate its profile asks for (alert below %v) for 5 minutes: the brokers or the network do not keep up, or the producer lacks CPU." $r.producerMinRatio | quote }}
{{- end -}}
