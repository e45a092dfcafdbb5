variable "name" {
  description = "Name of the EKS cluster (also prefixes its IAM roles and log group)."
  type        = string
}

variable "kubernetes_version" {
  description = "Kubernetes version, e.g. 1.34."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets for the control plane's network interfaces and Auto Mode's nodes."
  type        = list(string)
}

variable "public_access_cidrs" {
  description = "CIDRs allowed to reach the public API endpoint."
  type        = list(string)
}

variable "admin_principal_arns" {
  description = "IAM principals given cluster-admin through access entries (the caller of Terraform is added by the root module)."
  type        = list(string)
}

variable "node_pools" {
  description = "Auto Mode built-in node pools: general-purpose and/or system."
  type        = list(string)
}

variable "kms_key_arn" {
  description = "KMS key for envelope encryption of Kubernetes Secrets and for the control-plane log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the control-plane log group."
  type        = number
}
