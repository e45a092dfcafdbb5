# ebb on AWS: the reference system's stack (VPC, MSK with IAM auth, EKS Auto Mode, EKS Pod
# Identity, KEDA, kube-prometheus-stack) plus an ECR repository for ebb's image and the ebb
# chart itself. The order of a deploy is in the README ("Deploy on AWS (MSK + EKS)"):
# apply, push the image, create the topics, apply again with deploy_ebb = true.
#
#   main.tf        zones, the stack's KMS key, the network, MSK, EKS and ECR
#   iam.tf         least-privilege MSK policies and the Pod Identity associations
#   kubernetes.tf  storage class, namespaces, KEDA, kube-prometheus-stack, the ebb chart
#   outputs.tf     brokers, cluster name, ECR URL, the commands of the next steps

data "aws_availability_zones" "available" {
  #checkov:skip=CKV_AWS_394:the stack takes the first var.availability_zones zones in name order (local.azs), so a zone AWS adds later (a later letter) does not change which zones it uses
  state = "available"

  # No Local Zones or Wavelength Zones.
  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"]
  }
}

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

# The IAM role behind the caller's STS session: what an access entry must name.
data "aws_iam_session_context" "current" {
  arn = data.aws_caller_identity.current.arn
}

locals {
  azs        = slice(data.aws_availability_zones.available.names, 0, var.availability_zones)
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  broker_count = var.availability_zones * var.msk_brokers_per_zone
  admins       = distinct(concat([data.aws_iam_session_context.current.issuer_arn], var.eks_admin_principal_arns))
}

# ---- Encryption key ------------------------------------------------------------------------
# One customer-managed key for the stack's data at rest: MSK broker storage, Kubernetes
# Secrets, the ECR repository and the CloudWatch log groups.

data "aws_iam_policy_document" "kms" {
  #checkov:skip=CKV_AWS_109:a key policy, not an identity policy: its Resource "*" is this key alone; the account statement is AWS's default key policy, which leaves access control to IAM
  #checkov:skip=CKV_AWS_111:a key policy, not an identity policy: its Resource "*" is this key alone, and the CloudWatch Logs statement is limited to this account's log groups
  #checkov:skip=CKV_AWS_356:a key policy, not an identity policy: its Resource "*" is this key alone (key policies cannot name another resource)
  statement {
    sid       = "AccountAdministersThroughIam"
    actions   = ["kms:*"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  statement {
    sid = "CloudWatchLogsOfThisAccount"
    actions = [
      "kms:Encrypt*",
      "kms:Decrypt*",
      "kms:ReEncrypt*",
      "kms:GenerateDataKey*",
      "kms:Describe*",
    ]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${var.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${var.region}:${local.account_id}:log-group:*"]
    }
  }
}

resource "aws_kms_key" "this" {
  description             = "${var.name}: MSK storage, EKS secrets, ECR images, CloudWatch logs"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "this" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.this.key_id
}

# ---- Network, Kafka, Kubernetes ------------------------------------------------------------

module "network" {
  source = "./modules/network"

  name               = var.name
  region             = var.region
  cidr               = var.vpc_cidr
  azs                = local.azs
  single_nat_gateway = var.single_nat_gateway
  cluster_name       = var.name
  kms_key_arn        = aws_kms_key.this.arn
  log_retention_days = var.log_retention_days
}

module "eks" {
  source = "./modules/eks"

  name                 = var.name
  kubernetes_version   = var.kubernetes_version
  subnet_ids           = module.network.private_subnet_ids
  public_access_cidrs  = var.eks_public_access_cidrs
  admin_principal_arns = local.admins
  node_pools           = var.eks_node_pools
  kms_key_arn          = aws_kms_key.this.arn
  log_retention_days   = var.log_retention_days
}

module "msk" {
  source = "./modules/msk"

  name                      = var.name
  kafka_version             = var.msk_kafka_version
  instance_type             = var.msk_broker_instance_type
  broker_count              = local.broker_count
  volume_size               = var.msk_volume_size
  vpc_id                    = module.network.vpc_id
  subnet_ids                = module.network.private_subnet_ids
  client_security_group_ids = [module.eks.cluster_security_group_id]
  enhanced_monitoring       = var.msk_enhanced_monitoring
  open_monitoring           = var.msk_open_monitoring
  kms_key_arn               = aws_kms_key.this.arn
  log_retention_days        = var.log_retention_days

  server_properties = {
    # Topics exist only when `ebb topic create` made them (a typo must not make a topic).
    "auto.create.topics.enable"      = "false"
    "default.replication.factor"     = tostring(min(3, local.broker_count))
    "min.insync.replicas"            = tostring(var.topic.min_insync_replicas)
    "unclean.leader.election.enable" = "false"
  }
}

# ---- Image repository ----------------------------------------------------------------------

resource "aws_ecr_repository" "ebb" {
  name                 = var.name
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.ecr_force_delete

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }
}

resource "aws_ecr_lifecycle_policy" "ebb" {
  repository = aws_ecr_repository.ebb.name

  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the ${var.ecr_keep_images} most recent images"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = var.ecr_keep_images
      }
      action = { type = "expire" }
    }]
  })
}
