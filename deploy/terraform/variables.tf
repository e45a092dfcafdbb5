# ---- General -------------------------------------------------------------------------------

variable "name" {
  description = "Name of the stack: prefix of every AWS resource (VPC, MSK cluster, EKS cluster, IAM roles, ECR repository) and the Project tag."
  type        = string
  default     = "ebb"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}$", var.name))
    error_message = "name must be 2-23 characters of lowercase letters, digits and dashes, starting with a letter (it prefixes IAM role and MSK cluster names, which have length limits)."
  }
}

variable "region" {
  description = "AWS region of everything (MSK's IAM tokens are signed for it; the chart gets it as AWS_REGION)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must be an AWS region name such as us-east-1 or eu-west-1."
  }
}

variable "tags" {
  description = "Extra tags on every AWS resource (the provider's default_tags), e.g. { CostCenter = \"streaming\" }."
  type        = map(string)
  default     = {}
}

variable "log_retention_days" {
  description = "Days CloudWatch keeps the VPC flow logs, MSK broker logs and EKS control-plane logs."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch Logs' retention values (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, ...)."
  }
}

# ---- Network -------------------------------------------------------------------------------

variable "vpc_cidr" {
  description = "CIDR of the VPC. Each zone gets a /20 private subnet (MSK brokers, EKS nodes and pods) and a /24 public one (NAT gateways, internet-facing load balancers)."
  type        = string
  default     = "10.0.0.0/16"

  validation {
    condition     = can(cidrhost(var.vpc_cidr, 0)) && tonumber(split("/", var.vpc_cidr)[1]) <= 16
    error_message = "vpc_cidr must be an IPv4 CIDR of size /16 or larger (the subnets are /20 and /24 slices of it)."
  }
}

variable "availability_zones" {
  description = "How many availability zones to spread the VPC, MSK brokers and EKS nodes over (the reference used 2; 3 survives the loss of a zone with replication factor 3)."
  type        = number
  default     = 3

  validation {
    condition     = var.availability_zones >= 2 && var.availability_zones <= 3 && floor(var.availability_zones) == var.availability_zones
    error_message = "availability_zones must be 2 or 3 (EKS needs two zones; MSK takes at most three client subnets)."
  }
}

variable "single_nat_gateway" {
  description = "One NAT gateway for all zones (cheaper: 1 instead of one per zone; a zone outage then cuts the others' egress to AWS APIs and ECR) instead of one per zone."
  type        = bool
  default     = false
}

# ---- MSK -----------------------------------------------------------------------------------

variable "msk_kafka_version" {
  description = "Apache Kafka version of the MSK cluster, as MSK names it (4.x runs in KRaft mode: 4.1.x.kraft). KEDA's kafka scaler is told the matching protocol version."
  type        = string
  default     = "4.1.x.kraft"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.(x|[0-9]+)(\\.kraft)?$", var.msk_kafka_version))
    error_message = "msk_kafka_version must be an MSK Kafka version such as 4.1.x.kraft, 4.0.x.kraft or 3.9.x."
  }
}

variable "msk_broker_instance_type" {
  description = "MSK broker instance type (the reference: kafka.m5.large; kafka.m7g.large is its Graviton equivalent at a slightly lower price)."
  type        = string
  default     = "kafka.m5.large"

  validation {
    condition     = can(regex("^kafka\\.[a-z0-9]+\\.[a-z0-9]+$", var.msk_broker_instance_type))
    error_message = "msk_broker_instance_type must be an MSK standard broker type such as kafka.m5.large or kafka.m7g.large."
  }
}

variable "msk_brokers_per_zone" {
  description = "MSK brokers in each availability zone; the cluster has availability_zones x this many brokers."
  type        = number
  default     = 1

  validation {
    condition     = var.msk_brokers_per_zone >= 1 && floor(var.msk_brokers_per_zone) == var.msk_brokers_per_zone
    error_message = "msk_brokers_per_zone must be a whole number of at least 1."
  }
}

variable "msk_volume_size" {
  description = "EBS storage per broker, GiB (MSK standard brokers)."
  type        = number
  default     = 100

  validation {
    condition     = var.msk_volume_size >= 1 && var.msk_volume_size <= 16384
    error_message = "msk_volume_size must be between 1 and 16384 GiB."
  }
}

variable "msk_enhanced_monitoring" {
  description = "MSK's CloudWatch metrics level: DEFAULT (free), PER_BROKER, PER_TOPIC_PER_BROKER or PER_TOPIC_PER_PARTITION (paid per metric)."
  type        = string
  default     = "DEFAULT"

  validation {
    condition     = contains(["DEFAULT", "PER_BROKER", "PER_TOPIC_PER_BROKER", "PER_TOPIC_PER_PARTITION"], var.msk_enhanced_monitoring)
    error_message = "msk_enhanced_monitoring must be DEFAULT, PER_BROKER, PER_TOPIC_PER_BROKER or PER_TOPIC_PER_PARTITION."
  }
}

variable "msk_open_monitoring" {
  description = "Run MSK's Prometheus JMX (port 11001) and node (11002) exporters on the brokers; kube-prometheus-stack scrapes them."
  type        = bool
  default     = true
}

# ---- Topic and group (created after apply with `ebb topic create`) --------------------------

variable "topic" {
  description = <<-EOT
    The topic ebb reads and writes, and its dead-letter topic. The MSK API does not create
    topics: after apply, `terraform output -raw topic_create_commands` prints the
    `ebb topic create` runs (inside the cluster, as the topic-admin service account) that do.
    The reference's layout is 100 partitions; its replication factor was 2 on 2 brokers, here
    3 with min.insync.replicas 2 on one broker per zone. dead_letter_topic: empty means
    <name>.dlq (the chart's default), "none" means no dead-letter topic.
  EOT
  type = object({
    name                   = optional(string, "trade-tx")
    partitions             = optional(number, 100)
    replication_factor     = optional(number, 3)
    min_insync_replicas    = optional(number, 2)
    retention_ms           = optional(number, 604800000)
    dead_letter_topic      = optional(string, "")
    dead_letter_partitions = optional(number, 3)
  })
  default = {}

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,200}$", var.topic.name)) && var.topic.partitions >= 1 && var.topic.partitions <= 5000
    error_message = "topic.name must be a Kafka topic name (letters, digits, '.', '_', '-') and topic.partitions between 1 and 5000."
  }

  validation {
    condition     = var.topic.replication_factor >= 1 && var.topic.min_insync_replicas >= 1 && var.topic.min_insync_replicas <= var.topic.replication_factor
    error_message = "topic.min_insync_replicas must be between 1 and topic.replication_factor."
  }
}

variable "consumer_group" {
  description = "Consumer group of `ebb consume` (CONSUMER_GROUP), and the group whose lag KEDA reads; the IAM policies are scoped to it."
  type        = string
  default     = "tx-trade-workers"

  validation {
    condition     = can(regex("^[A-Za-z0-9._-]{1,200}$", var.consumer_group))
    error_message = "consumer_group must be letters, digits, '.', '_' and '-'."
  }
}

# ---- EKS -----------------------------------------------------------------------------------

variable "kubernetes_version" {
  description = "EKS Kubernetes version (the chart is checked against a 1.34 API server in crates/ebb/tests/real/deploy.rs)."
  type        = string
  default     = "1.34"

  validation {
    condition     = can(regex("^1\\.[0-9]{2}$", var.kubernetes_version))
    error_message = "kubernetes_version must look like 1.34."
  }
}

variable "eks_public_access_cidrs" {
  description = "CIDRs allowed to reach the EKS API's public endpoint: where Terraform (its helm and kubernetes providers) and kubectl run from, e.g. [\"203.0.113.7/32\"]. Required: the API is never open to the whole internet by default."
  type        = list(string)

  validation {
    condition     = length(var.eks_public_access_cidrs) > 0 && alltrue([for c in var.eks_public_access_cidrs : can(cidrhost(c, 0))])
    error_message = "eks_public_access_cidrs must be a non-empty list of IPv4 CIDRs such as 203.0.113.7/32."
  }

  validation {
    condition     = alltrue([for c in var.eks_public_access_cidrs : !endswith(c, "/0")])
    error_message = "eks_public_access_cidrs must not open the API to every address (/0): name the networks Terraform and kubectl run from."
  }
}

variable "eks_admin_principal_arns" {
  description = "IAM roles or users given cluster-admin through EKS access entries, besides whoever runs Terraform (always added, see the eks module)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.eks_admin_principal_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:(role|user)/.+$", a))])
    error_message = "eks_admin_principal_arns must be IAM role or user ARNs (arn:aws:iam::123456789012:role/Name)."
  }
}

variable "eks_node_pools" {
  description = "EKS Auto Mode's built-in node pools to enable: general-purpose (workloads) and system (CriticalAddonsOnly)."
  type        = list(string)
  default     = ["general-purpose", "system"]

  validation {
    condition     = length(var.eks_node_pools) > 0 && alltrue([for p in var.eks_node_pools : contains(["general-purpose", "system"], p)])
    error_message = "eks_node_pools must name general-purpose and/or system."
  }
}

# ---- Images --------------------------------------------------------------------------------

variable "ecr_force_delete" {
  description = "Let `terraform destroy` delete the ECR repository while it still holds images."
  type        = bool
  default     = false
}

variable "ecr_keep_images" {
  description = "The ECR lifecycle policy keeps this many most recent images."
  type        = number
  default     = 30

  validation {
    condition     = var.ecr_keep_images >= 1
    error_message = "ecr_keep_images must be at least 1."
  }
}

# ---- Cluster add-ons -----------------------------------------------------------------------

variable "keda_chart_version" {
  description = "Version of the kedacore/keda chart (the chart's version equals KEDA's: 2.21.0 is what ebb's KEDA model and tests follow)."
  type        = string
  default     = "2.21.0"
}

variable "keda_chart_repository" {
  description = "Helm repository of the keda chart."
  type        = string
  default     = "https://kedacore.github.io/charts"
}

variable "keda_namespace" {
  description = "Namespace of KEDA; its operator's service account (keda-operator) gets a Pod Identity association to read the group's lag."
  type        = string
  default     = "keda"
}

variable "kube_prometheus_stack_chart_version" {
  description = "Version of the prometheus-community/kube-prometheus-stack chart (Prometheus operator, Prometheus, Alertmanager, Grafana)."
  type        = string
  default     = "88.5.0"
}

variable "kube_prometheus_stack_chart_repository" {
  description = "Helm repository of the kube-prometheus-stack chart."
  type        = string
  default     = "https://prometheus-community.github.io/helm-charts"
}

variable "monitoring_namespace" {
  description = "Namespace of kube-prometheus-stack (Prometheus, Grafana)."
  type        = string
  default     = "monitoring"
}

variable "prometheus_storage_size" {
  description = "Persistent volume of Prometheus (EBS gp3 through EKS Auto Mode's block storage), e.g. 50Gi as in the reference."
  type        = string
  default     = "50Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi|Ti)$", var.prometheus_storage_size))
    error_message = "prometheus_storage_size must be a Kubernetes quantity such as 50Gi."
  }
}

variable "prometheus_retention" {
  description = "How long Prometheus keeps samples, e.g. 15d."
  type        = string
  default     = "15d"

  validation {
    condition     = can(regex("^[0-9]+(h|d|w|y)$", var.prometheus_retention))
    error_message = "prometheus_retention must be a Prometheus duration such as 15d."
  }
}

# ---- ebb -----------------------------------------------------------------------------------

variable "deploy_ebb" {
  description = "Install the ebb chart (deploy/helm/ebb). Leave false on the first apply: the image must be pushed to the ECR repository and the topics created first (see the README's Deploy on AWS)."
  type        = bool
  default     = false
}

variable "ebb_image_tag" {
  description = "Tag of ebb's image in the ECR repository (what `scripts/image build` tags: ebb's version)."
  type        = string
  default     = "0.1.0"

  validation {
    condition     = can(regex("^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$", var.ebb_image_tag)) && var.ebb_image_tag != "latest"
    error_message = "ebb_image_tag must be an image tag other than latest (the repository's tags are immutable; pin a release)."
  }
}

variable "ebb_namespace" {
  description = "Namespace of the ebb release (consumer, producer, keda-scaler) and of the topic-admin service account."
  type        = string
  default     = "ebb"
}

variable "ebb_release_name" {
  description = "Helm release name of ebb (object names are <release>-consumer and so on)."
  type        = string
  default     = "ebb"
}

variable "ebb_service_account" {
  description = "Service account the chart creates for ebb's pods (serviceAccount.name); its EKS Pod Identity association gives them MSK access. The chart runs consumer, producer and keda-scaler under this one account."
  type        = string
  default     = "ebb"
}

variable "ebb_scaling_mode" {
  description = "scaling.mode of the chart: keda-lag (KEDA's kafka scaler, the reference's ScaledObject), ebb-rate (ebb keda-scaler as a KEDA external scaler) or none."
  type        = string
  default     = "keda-lag"

  validation {
    condition     = contains(["keda-lag", "ebb-rate", "none"], var.ebb_scaling_mode)
    error_message = "ebb_scaling_mode must be keda-lag, ebb-rate or none."
  }
}

variable "ebb_producer_enabled" {
  description = "Deploy `ebb produce` (the trade generator) beside the consumer; its write access to the topic is only granted when true."
  type        = bool
  default     = false
}

variable "ebb_producer_rate" {
  description = "producer.rate of the chart: messages per second or a rate profile (MESSAGES_PER_SECOND), e.g. \"10\" or \"10@60s,1000@5m,5000@10m,0\"."
  type        = string
  default     = "10"
}

variable "ebb_extra_values" {
  description = "More values files for the ebb chart, as YAML strings, applied after the ones Terraform sets (e.g. file(\"tuned.yaml\") from `ebb tune --format helm-values`)."
  type        = list(string)
  default     = []
}
