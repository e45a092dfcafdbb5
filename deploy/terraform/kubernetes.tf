# What runs in the cluster: a default StorageClass for Auto Mode's EBS driver, the
# namespaces, KEDA and kube-prometheus-stack from their charts, and (with deploy_ebb) the ebb
# chart from ../helm/ebb wired to MSK. Everything here talks to the new cluster's API as the
# caller, so it depends on module.eks as a whole (the caller's admin access entry included).

locals {
  kube_prometheus_stack_release = "kube-prometheus-stack"
  # KEDA's kafka scaler (sarama) announces a protocol version; Kafka 4 brokers refuse the
  # oldest ones, so tell it the cluster's: 4.1.x.kraft -> 4.1.0.
  kafka_protocol_version = "${regex("^[0-9]+\\.[0-9]+", var.msk_kafka_version)}.0"
  ebb_image              = "${aws_ecr_repository.ebb.repository_url}:${var.ebb_image_tag}"
}

# Auto Mode's block storage has no default StorageClass; Prometheus' volume needs one.
resource "kubernetes_storage_class_v1" "gp3" {
  metadata {
    name = "gp3-encrypted"
    annotations = {
      "storageclass.kubernetes.io/is-default-class" = "true"
    }
  }

  storage_provisioner    = "ebs.csi.eks.amazonaws.com"
  volume_binding_mode    = "WaitForFirstConsumer"
  reclaim_policy         = "Delete"
  allow_volume_expansion = true

  parameters = {
    type      = "gp3"
    encrypted = "true"
  }

  allowed_topologies {
    match_label_expressions {
      key    = "eks.amazonaws.com/compute-type"
      values = ["auto"]
    }
  }

  depends_on = [module.eks]
}

resource "kubernetes_namespace_v1" "this" {
  for_each = {
    (var.ebb_namespace)        = "restricted"
    (var.keda_namespace)       = "baseline"
    (var.monitoring_namespace) = "privileged" # node-exporter reads the host
  }

  metadata {
    name = each.key
    labels = {
      "pod-security.kubernetes.io/enforce" = each.value
    }
  }

  depends_on = [module.eks]
}

# `ebb topic create` runs once as this account (outputs.topic_create_commands).
resource "kubernetes_service_account_v1" "topic_admin" {
  metadata {
    name      = local.topic_admin_service_account
    namespace = kubernetes_namespace_v1.this[var.ebb_namespace].metadata[0].name
  }

  automount_service_account_token = false
}

# ---- kube-prometheus-stack -----------------------------------------------------------------

resource "random_password" "grafana_admin" {
  length  = 32
  special = false
}

resource "kubernetes_secret_v1" "grafana_admin" {
  metadata {
    name      = "grafana-admin"
    namespace = kubernetes_namespace_v1.this[var.monitoring_namespace].metadata[0].name
  }

  data = {
    "admin-user"     = "admin"
    "admin-password" = random_password.grafana_admin.result
  }
}

resource "helm_release" "kube_prometheus_stack" {
  name       = local.kube_prometheus_stack_release
  repository = var.kube_prometheus_stack_chart_repository
  chart      = "kube-prometheus-stack"
  version    = var.kube_prometheus_stack_chart_version
  namespace  = kubernetes_namespace_v1.this[var.monitoring_namespace].metadata[0].name
  timeout    = 900

  values = [yamlencode({
    prometheus = {
      prometheusSpec = {
        # Select every PodMonitor, ServiceMonitor and PrometheusRule in the cluster (ebb's
        # chart renders them in its own namespace), not only this release's.
        podMonitorSelectorNilUsesHelmValues     = false
        serviceMonitorSelectorNilUsesHelmValues = false
        ruleSelectorNilUsesHelmValues           = false
        retention                               = var.prometheus_retention
        storageSpec = {
          volumeClaimTemplate = {
            spec = {
              storageClassName = kubernetes_storage_class_v1.gp3.metadata[0].name
              accessModes      = ["ReadWriteOnce"]
              resources        = { requests = { storage = var.prometheus_storage_size } }
            }
          }
        }
        # MSK's open-monitoring exporters on every broker.
        additionalScrapeConfigs = var.msk_open_monitoring ? [
          {
            job_name        = "msk-jmx"
            scrape_interval = "60s"
            static_configs  = [{ targets = [for h in module.msk.broker_hosts : "${h}:11001"] }]
          },
          {
            job_name        = "msk-node"
            scrape_interval = "60s"
            static_configs  = [{ targets = [for h in module.msk.broker_hosts : "${h}:11002"] }]
          },
        ] : []
      }
    }
    grafana = {
      admin = {
        existingSecret = kubernetes_secret_v1.grafana_admin.metadata[0].name
        userKey        = "admin-user"
        passwordKey    = "admin-password"
      }
      # Dashboards come as ConfigMaps labelled grafana_dashboard: "1" from any namespace
      # (ebb's chart can render its dashboard that way: its monitoring.* values).
      sidecar = {
        dashboards = {
          enabled         = true
          searchNamespace = "ALL"
        }
      }
    }
  })]

  depends_on = [module.eks]
}

# ---- KEDA ----------------------------------------------------------------------------------

resource "helm_release" "keda" {
  name       = "keda"
  repository = var.keda_chart_repository
  chart      = "keda"
  version    = var.keda_chart_version
  namespace  = kubernetes_namespace_v1.this[var.keda_namespace].metadata[0].name

  values = [yamlencode({
    # The account the keda-operator Pod Identity association (iam.tf) names; KEDA reads
    # the group's lag with its credentials (the chart's TriggerAuthentication: podIdentity
    # provider aws, identityOwner keda).
    serviceAccount = { operator = { create = true, name = "keda-operator" } }
    prometheus = {
      operator = {
        enabled        = true
        serviceMonitor = { enabled = true }
      }
      metricServer = {
        enabled        = true
        serviceMonitor = { enabled = true }
      }
    }
  })]

  # ServiceMonitor's CRD comes with kube-prometheus-stack; the association must exist
  # before the operator's pod starts (Pod Identity injects credentials at admission).
  depends_on = [helm_release.kube_prometheus_stack, module.pod_identity]
}

# ---- ebb -----------------------------------------------------------------------------------

locals {
  ebb_values = {
    image = {
      repository = aws_ecr_repository.ebb.repository_url
      tag        = var.ebb_image_tag
    }
    kafka = {
      bootstrapServers = module.msk.bootstrap_brokers_sasl_iam
      topic            = var.topic.name
      consumerGroup    = var.consumer_group
      auth = {
        type      = "msk-iam"
        awsRegion = var.region
      }
    }
    serviceAccount = {
      create = true
      name   = var.ebb_service_account
    }
    consumer = {
      deadLetterTopic = var.topic.dead_letter_topic
    }
    producer = {
      enabled = var.ebb_producer_enabled
      rate    = var.ebb_producer_rate
    }
    scaling = {
      mode            = var.ebb_scaling_mode
      maxReplicaCount = var.topic.partitions
      kedaLag         = { version = local.kafka_protocol_version }
    }
    monitoring = {
      podMonitor = {
        enabled = true
        labels  = { release = local.kube_prometheus_stack_release }
      }
    }
    networkPolicy = {
      # Only KEDA calls ebb keda-scaler's gRPC port.
      kedaScalerFrom = [{
        namespaceSelector = { matchLabels = { "kubernetes.io/metadata.name" = var.keda_namespace } }
      }]
    }
  }
}

resource "helm_release" "ebb" {
  count = var.deploy_ebb ? 1 : 0

  name      = var.ebb_release_name
  chart     = "${path.module}/../helm/ebb"
  namespace = kubernetes_namespace_v1.this[var.ebb_namespace].metadata[0].name
  values    = concat([yamlencode(local.ebb_values)], var.ebb_extra_values)
  timeout   = 600

  depends_on = [helm_release.keda, helm_release.kube_prometheus_stack, module.pod_identity]
}
