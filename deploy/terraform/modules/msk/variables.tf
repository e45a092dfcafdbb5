variable "name" {
  description = "Name of the MSK cluster (also prefixes its configuration, security group and log group)."
  type        = string
}

variable "kafka_version" {
  description = "Apache Kafka version as MSK names it, e.g. 4.1.x.kraft."
  type        = string
}

variable "instance_type" {
  description = "Broker instance type, e.g. kafka.m5.large."
  type        = string
}

variable "broker_count" {
  description = "Number of brokers: a multiple of the number of subnets."
  type        = number
}

variable "volume_size" {
  description = "EBS storage per broker, GiB."
  type        = number
}

variable "vpc_id" {
  description = "VPC of the brokers' security group."
  type        = string
}

variable "subnet_ids" {
  description = "Client subnets, one per zone the brokers are spread over (private)."
  type        = list(string)
}

variable "client_security_group_ids" {
  description = "Security groups whose members may connect to the brokers (IAM port 9098, and the Prometheus exporters when open_monitoring): the EKS cluster security group that Auto Mode nodes and their pods use."
  type        = list(string)
}

variable "server_properties" {
  description = "Broker configuration (server.properties keys) of the cluster's MSK configuration."
  type        = map(string)
}

variable "enhanced_monitoring" {
  description = "CloudWatch metrics level: DEFAULT, PER_BROKER, PER_TOPIC_PER_BROKER or PER_TOPIC_PER_PARTITION."
  type        = string
}

variable "open_monitoring" {
  description = "Run the Prometheus JMX (11001) and node (11002) exporters on the brokers."
  type        = bool
}

variable "kms_key_arn" {
  description = "KMS key for encryption at rest (broker storage) and the broker-log group."
  type        = string
}

variable "log_retention_days" {
  description = "Retention of the broker-log group."
  type        = number
}
