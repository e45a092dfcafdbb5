# MSK access through IAM, least privilege: every statement names the cluster, topic or group
# ARNs it is for (never kafka-cluster:* or Resource "*"), and each client gets only the
# actions its Kafka requests need (the MSK developer guide's table of actions):
#
#   consumer      Connect; DescribeTopic + ReadData on the topic; DescribeGroup + AlterGroup
#                 on the group (join, commit, fetch offsets); DescribeTopic + WriteData on
#                 the dead-letter topic, and WriteDataIdempotently on the cluster (its
#                 dead-letter producer is idempotent)
#   producer      Connect, WriteDataIdempotently (acks=all makes it idempotent); DescribeTopic
#                 + WriteData on the topic
#   keda-scaler   Connect; DescribeTopic on the topic (metadata, log-end offsets);
#   KEDA operator DescribeGroup on the group (committed offsets)
#   topic admin   Connect; CreateTopic + DescribeTopic on the topic and the dead-letter topic
#                 (`ebb topic create`, run once in the cluster after apply)
#
# The chart runs the consumer, the producer and the keda-scaler under one service account
# (serviceAccount.name), and EKS takes one Pod Identity association per service account, so
# that account's role holds the consumer's statements plus the producer's when
# ebb_producer_enabled and the keda-scaler's when ebb_scaling_mode is ebb-rate. KEDA's
# operator and the topic admin have roles of their own.

locals {
  kafka_arn_prefix = "arn:${local.partition}:kafka:${var.region}:${local.account_id}"
  msk_path         = "${module.msk.name}/${module.msk.uuid}"

  dead_letter_topic = (
    var.topic.dead_letter_topic == "none" ? null :
    var.topic.dead_letter_topic == "" ? "${var.topic.name}.dlq" : var.topic.dead_letter_topic
  )

  cluster_arn     = module.msk.arn
  topic_arn       = "${local.kafka_arn_prefix}:topic/${local.msk_path}/${var.topic.name}"
  dead_letter_arn = local.dead_letter_topic == null ? null : "${local.kafka_arn_prefix}:topic/${local.msk_path}/${local.dead_letter_topic}"
  group_arn       = "${local.kafka_arn_prefix}:group/${local.msk_path}/${var.consumer_group}"

  topic_admin_service_account = "${var.ebb_service_account}-topic-admin"
}

# ---- What each client may do -----------------------------------------------------------------

data "aws_iam_policy_document" "consumer" {
  statement {
    sid       = "ConsumerConnect"
    actions   = ["kafka-cluster:Connect"]
    resources = [local.cluster_arn]
  }

  statement {
    sid       = "ConsumerReadTopic"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:ReadData"]
    resources = [local.topic_arn]
  }

  statement {
    sid       = "ConsumerGroup"
    actions   = ["kafka-cluster:DescribeGroup", "kafka-cluster:AlterGroup"]
    resources = [local.group_arn]
  }

  dynamic "statement" {
    for_each = local.dead_letter_arn == null ? [] : [local.dead_letter_arn]

    content {
      sid       = "ConsumerWriteDeadLetters"
      actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = local.dead_letter_arn == null ? [] : [local.cluster_arn]

    content {
      sid       = "ConsumerIdempotentDeadLetters"
      actions   = ["kafka-cluster:WriteDataIdempotently"]
      resources = [statement.value]
    }
  }
}

data "aws_iam_policy_document" "producer" {
  statement {
    sid       = "ProducerConnect"
    actions   = ["kafka-cluster:Connect", "kafka-cluster:WriteDataIdempotently"]
    resources = [local.cluster_arn]
  }

  statement {
    sid       = "ProducerWriteTopic"
    actions   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
    resources = [local.topic_arn]
  }
}

# What reading the group's lag takes: `ebb keda-scaler` and KEDA's kafka scaler alike.
data "aws_iam_policy_document" "lag_reader" {
  statement {
    sid       = "LagConnect"
    actions   = ["kafka-cluster:Connect"]
    resources = [local.cluster_arn]
  }

  statement {
    sid       = "LagDescribeTopic"
    actions   = ["kafka-cluster:DescribeTopic"]
    resources = [local.topic_arn]
  }

  statement {
    sid       = "LagDescribeGroup"
    actions   = ["kafka-cluster:DescribeGroup"]
    resources = [local.group_arn]
  }
}

data "aws_iam_policy_document" "topic_admin" {
  statement {
    sid       = "AdminConnect"
    actions   = ["kafka-cluster:Connect"]
    resources = [local.cluster_arn]
  }

  statement {
    sid       = "AdminCreateTopics"
    actions   = ["kafka-cluster:CreateTopic", "kafka-cluster:DescribeTopic"]
    resources = compact([local.topic_arn, local.dead_letter_arn])
  }
}

# The chart's service account: the consumer always, the others when deployed.
data "aws_iam_policy_document" "ebb" {
  source_policy_documents = concat(
    [data.aws_iam_policy_document.consumer.json],
    var.ebb_producer_enabled ? [data.aws_iam_policy_document.producer.json] : [],
    var.ebb_scaling_mode == "ebb-rate" ? [data.aws_iam_policy_document.lag_reader.json] : [],
  )
}

# ---- Pod Identity: one role and association per service account ------------------------------

locals {
  identities = {
    workloads = {
      namespace       = var.ebb_namespace
      service_account = var.ebb_service_account
      description     = "ebb's pods (consume; produce, keda-scaler when deployed): MSK ${var.topic.name} / ${var.consumer_group}"
      policy_json     = data.aws_iam_policy_document.ebb.json
    }
    keda-operator = {
      namespace       = var.keda_namespace
      service_account = "keda-operator"
      description     = "KEDA's operator: reads the lag of ${var.consumer_group} on ${var.topic.name} (kafka trigger, podIdentity provider aws)"
      policy_json     = data.aws_iam_policy_document.lag_reader.json
    }
    topic-admin = {
      namespace       = var.ebb_namespace
      service_account = local.topic_admin_service_account
      description     = "ebb topic create, once after apply: creates ${var.topic.name} and its dead-letter topic"
      policy_json     = data.aws_iam_policy_document.topic_admin.json
    }
  }
}

module "pod_identity" {
  source   = "./modules/pod-identity"
  for_each = local.identities

  name            = "${var.name}-${each.key}"
  description     = each.value.description
  cluster_name    = module.eks.name
  namespace       = each.value.namespace
  service_account = each.value.service_account
  policy_json     = each.value.policy_json
}
