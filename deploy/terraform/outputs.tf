locals {
  # `ebb topic create` through the IAM listener, as the topic-admin service account, in a
  # pod as restricted as the chart's (the namespace enforces the restricted profile).
  kafka_args = [
    "--bootstrap-servers", module.msk.bootstrap_brokers_sasl_iam,
    "--security-protocol", "sasl_ssl",
    "--sasl-mechanism", "AWS_MSK_IAM",
    "--aws-region", var.region,
  ]
  topics_to_create = merge(
    {
      (var.topic.name) = [
        "--partitions", tostring(var.topic.partitions),
        "--replication", tostring(var.topic.replication_factor),
        "--config", "min.insync.replicas=${var.topic.min_insync_replicas}",
        "--config", "retention.ms=${var.topic.retention_ms}",
      ]
    },
    local.dead_letter_topic == null ? {} : {
      (local.dead_letter_topic) = [
        "--partitions", tostring(var.topic.dead_letter_partitions),
        "--replication", tostring(var.topic.replication_factor),
        "--config", "min.insync.replicas=${var.topic.min_insync_replicas}",
      ]
    },
  )
  topic_create_commands = [
    for topic, args in local.topics_to_create : format(
      "kubectl -n %s run ebb-topic-create --rm --attach --restart=Never --pod-running-timeout=5m --image=%s --overrides='%s'",
      var.ebb_namespace,
      local.ebb_image,
      jsonencode({
        apiVersion = "v1"
        spec = {
          serviceAccountName           = local.topic_admin_service_account
          automountServiceAccountToken = false
          securityContext = {
            runAsNonRoot   = true
            runAsUser      = 65532
            runAsGroup     = 65532
            seccompProfile = { type = "RuntimeDefault" }
          }
          containers = [{
            name  = "ebb-topic-create"
            image = local.ebb_image
            args  = concat(["topic", "create", topic], args, ["--if-not-exists"], local.kafka_args)
            securityContext = {
              allowPrivilegeEscalation = false
              readOnlyRootFilesystem   = true
              capabilities             = { drop = ["ALL"] }
            }
          }]
        }
      }),
    )
  ]
}

output "region" {
  description = "AWS region of the stack."
  value       = var.region
}

output "cluster_name" {
  description = "Name of the EKS cluster."
  value       = module.eks.name
}

output "kubeconfig_command" {
  description = "Adds the cluster to your kubeconfig (you need one of the admin principals' credentials)."
  value       = "aws eks update-kubeconfig --region ${var.region} --name ${module.eks.name}"
}

output "msk_cluster_arn" {
  description = "ARN of the MSK cluster."
  value       = module.msk.arn
}

output "msk_bootstrap_brokers_iam" {
  description = "Bootstrap brokers of MSK's IAM listener (port 9098): kafka.bootstrapServers of the chart, --bootstrap-servers of ebb."
  value       = module.msk.bootstrap_brokers_sasl_iam
}

output "ecr_repository_url" {
  description = "ECR repository for ebb's image: the chart's image.repository."
  value       = aws_ecr_repository.ebb.repository_url
}

output "image_push_command" {
  description = "Pushes the image `scripts/image build` made (an OCI layout in target/image/ebb-oci) to the ECR repository, from the repository's root."
  value = format(
    "skopeo copy --dest-creds \"AWS:$(aws ecr get-login-password --region %s)\" oci:target/image/ebb-oci:%s docker://%s",
    var.region, var.ebb_image_tag, local.ebb_image,
  )
}

output "topic_create_commands" {
  description = "Creates the topic and its dead-letter topic with `ebb topic create` in the cluster, as the topic-admin service account (MSK's API creates no topics). Run after the image is pushed."
  value       = join("\n", local.topic_create_commands)

  precondition {
    condition     = var.topic.replication_factor <= local.broker_count
    error_message = "topic.replication_factor (${var.topic.replication_factor}) cannot exceed the number of MSK brokers (${local.broker_count})."
  }
}

output "ebb_helm_values" {
  description = "The values Terraform gives the ebb chart (with deploy_ebb), for a `helm upgrade --install` by hand: helm upgrade --install ebb deploy/helm/ebb -n <ebb_namespace> -f <(terraform -chdir=deploy/terraform output -raw ebb_helm_values)."
  value       = yamlencode(local.ebb_values)
}

output "pod_identity_roles" {
  description = "IAM role of each service account with MSK access (namespace/name = role ARN)."
  value = {
    for k, v in local.identities : "${v.namespace}/${v.service_account}" => module.pod_identity[k].role_arn
  }
}

output "grafana_command" {
  description = "Opens kube-prometheus-stack's Grafana on http://localhost:3000 (user admin, password from the grafana-admin Secret)."
  value = join(" && ", [
    "kubectl -n ${var.monitoring_namespace} get secret grafana-admin -o jsonpath='{.data.admin-password}' | base64 -d; echo",
    "kubectl -n ${var.monitoring_namespace} port-forward svc/${local.kube_prometheus_stack_release}-grafana 3000:80",
  ])
}
