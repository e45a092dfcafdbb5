variable "name" {
  description = "Name of the IAM role."
  type        = string
}

variable "description" {
  description = "What the role is for (the IAM role's description)."
  type        = string
}

variable "cluster_name" {
  description = "EKS cluster of the association."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the service account."
  type        = string
}

variable "service_account" {
  description = "Kubernetes service account whose pods get the role."
  type        = string
}

variable "policy_json" {
  description = "The role's permissions, an IAM policy document (JSON), kept inline so that they live and die with the role."
  type        = string
}
