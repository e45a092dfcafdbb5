output "arn" {
  description = "ARN of the MSK cluster."
  value       = aws_msk_cluster.this.arn
}

output "name" {
  description = "Name of the MSK cluster."
  value       = aws_msk_cluster.this.cluster_name
}

output "uuid" {
  description = "UUID of the MSK cluster, the part of its topic and group ARNs after the name."
  value       = aws_msk_cluster.this.cluster_uuid
}

output "bootstrap_brokers_sasl_iam" {
  description = "Bootstrap brokers of the IAM listener, host:9098[,host:9098...]."
  value       = aws_msk_cluster.this.bootstrap_brokers_sasl_iam
}

output "broker_hosts" {
  description = "Host names of every broker (for the Prometheus exporters on 11001 and 11002)."
  value       = sort(flatten(data.aws_msk_broker_nodes.this.node_info_list[*].endpoints))
}

output "security_group_id" {
  description = "Security group of the brokers."
  value       = aws_security_group.this.id
}
