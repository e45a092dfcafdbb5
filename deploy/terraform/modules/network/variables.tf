variable "name" {
  description = "Prefix of the resources' Name tags."
  type        = string
}

variable "region" {
  description = "AWS region (for the S3 gateway endpoint's service name)."
  type        = string
}

variable "cidr" {
  description = "IPv4 CIDR of the VPC."
  type        = string
}

variable "azs" {
  description = "Availability zones to create a private and a public subnet in."
  type        = list(string)
}

variable "single_nat_gateway" {
  description = "One NAT gateway (in the first zone) for all private subnets instead of one per zone."
  type        = bool
}

variable "cluster_name" {
  description = "EKS cluster whose load balancers may use the subnets (kubernetes.io/cluster/<name> tag)."
  type        = string
}

variable "kms_key_arn" {
  description = "KMS key encrypting the flow-log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the flow-log group."
  type        = number
}
