# EKS in Auto Mode: AWS runs the nodes (compute_config, with the built-in node pools), the
# load balancer controller (kubernetes_network_config.elastic_load_balancing) and the EBS
# CSI driver (storage_config.block_storage), and the EKS Pod Identity agent, so the cluster
# needs no add-ons of its own. Authentication is by EKS access entries only (no aws-auth
# ConfigMap); var.admin_principal_arns get AmazonEKSClusterAdminPolicy. Secrets are
# envelope-encrypted with the stack's KMS key; every control-plane log type goes to CloudWatch.

data "aws_partition" "current" {}

locals {
  policy_prefix = "arn:${data.aws_partition.current.partition}:iam::aws:policy"
  log_types     = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
}

# ---- Cluster role: Auto Mode's managed policies ---------------------------------------------

data "aws_iam_policy_document" "cluster_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["eks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "cluster" {
  name               = "${var.name}-eks-cluster"
  assume_role_policy = data.aws_iam_policy_document.cluster_assume.json
}

resource "aws_iam_role_policy_attachment" "cluster" {
  for_each = toset([
    "AmazonEKSClusterPolicy",
    "AmazonEKSComputePolicy",
    "AmazonEKSBlockStoragePolicy",
    "AmazonEKSLoadBalancingPolicy",
    "AmazonEKSNetworkingPolicy",
  ])

  role       = aws_iam_role.cluster.name
  policy_arn = "${local.policy_prefix}/${each.value}"
}

# Envelope encryption of Secrets: the control plane uses the stack's key.
data "aws_iam_policy_document" "cluster_encryption" {
  statement {
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ListGrants", "kms:DescribeKey"]
    resources = [var.kms_key_arn]
  }
}

resource "aws_iam_role_policy" "cluster_encryption" {
  name   = "secrets-encryption"
  role   = aws_iam_role.cluster.id
  policy = data.aws_iam_policy_document.cluster_encryption.json
}

# ---- Node role: what Auto Mode's nodes run as -----------------------------------------------

data "aws_iam_policy_document" "node_assume" {
  statement {
    actions = ["sts:AssumeRole", "sts:TagSession"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "node" {
  name               = "${var.name}-eks-node"
  assume_role_policy = data.aws_iam_policy_document.node_assume.json
}

resource "aws_iam_role_policy_attachment" "node" {
  for_each = toset([
    "AmazonEKSWorkerNodeMinimalPolicy",
    "AmazonEC2ContainerRegistryPullOnly",
  ])

  role       = aws_iam_role.node.name
  policy_arn = "${local.policy_prefix}/${each.value}"
}

# ---- Cluster -------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "cluster" {
  #checkov:skip=CKV_AWS_338:retention is var.log_retention_days (30 days by default); keeping a year of control-plane logs is each deployment's choice and cost
  # The name EKS writes to; creating it first sets its retention and key.
  name              = "/aws/eks/${var.name}/cluster"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_eks_cluster" "this" {
  #checkov:skip=CKV_AWS_38:public_access_cidrs is the root's var.eks_public_access_cidrs, which has no default and whose validation refuses a /0; checkov cannot see a value to check
  #checkov:skip=CKV_AWS_39:the public endpoint is how Terraform's helm and kubernetes providers and kubectl reach the API; it is limited to var.public_access_cidrs (no default) and the private endpoint is on for the nodes
  name                          = var.name
  role_arn                      = aws_iam_role.cluster.arn
  version                       = var.kubernetes_version
  enabled_cluster_log_types     = local.log_types
  bootstrap_self_managed_addons = false

  access_config {
    authentication_mode = "API"
    # The caller gets its admin access through an access entry below, which Terraform
    # manages (and can remove) like any other.
    bootstrap_cluster_creator_admin_permissions = false
  }

  compute_config {
    enabled       = true
    node_pools    = var.node_pools
    node_role_arn = aws_iam_role.node.arn
  }

  kubernetes_network_config {
    elastic_load_balancing {
      enabled = true
    }
  }

  storage_config {
    block_storage {
      enabled = true
    }
  }

  vpc_config {
    subnet_ids              = var.subnet_ids
    endpoint_private_access = true
    endpoint_public_access  = true
    public_access_cidrs     = var.public_access_cidrs
  }

  encryption_config {
    resources = ["secrets"]

    provider {
      key_arn = var.kms_key_arn
    }
  }

  # Policies first on create, and removed only after the cluster on destroy: EKS needs them
  # to clean up the network interfaces and security groups it made.
  depends_on = [
    aws_iam_role_policy_attachment.cluster,
    aws_iam_role_policy.cluster_encryption,
    aws_cloudwatch_log_group.cluster,
  ]
}

# ---- Access entries ------------------------------------------------------------------------

resource "aws_eks_access_entry" "admin" {
  for_each = toset(var.admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  type          = "STANDARD"
}

resource "aws_eks_access_policy_association" "admin" {
  for_each = toset(var.admin_principal_arns)

  cluster_name  = aws_eks_cluster.this.name
  principal_arn = each.value
  policy_arn    = "arn:${data.aws_partition.current.partition}:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"

  access_scope {
    type = "cluster"
  }

  depends_on = [aws_eks_access_entry.admin]
}
