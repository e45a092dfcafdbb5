# MSK provisioned: brokers in private subnets, clients authenticated with IAM only (SASL,
# port 9098; no unauthenticated or plaintext listener), TLS between clients and brokers and
# between brokers, storage encrypted with the stack's KMS key, broker logs in CloudWatch.
# Only members of the client security groups reach the brokers.

resource "aws_security_group" "this" {
  name        = "${var.name}-msk"
  description = "MSK brokers of ${var.name}: IAM clients (9098) and Prometheus exporters from the EKS cluster security group only"
  vpc_id      = var.vpc_id

  tags = { Name = "${var.name}-msk" }
}

# count, not for_each: the security groups' IDs are not known until EKS has made them.
resource "aws_vpc_security_group_ingress_rule" "iam" {
  count = length(var.client_security_group_ids)

  security_group_id            = aws_security_group.this.id
  referenced_security_group_id = var.client_security_group_ids[count.index]
  ip_protocol                  = "tcp"
  from_port                    = 9098
  to_port                      = 9098
  description                  = "Kafka clients, SASL/IAM over TLS"
}

resource "aws_vpc_security_group_ingress_rule" "exporters" {
  count = var.open_monitoring ? length(var.client_security_group_ids) : 0

  security_group_id            = aws_security_group.this.id
  referenced_security_group_id = var.client_security_group_ids[count.index]
  ip_protocol                  = "tcp"
  from_port                    = 11001
  to_port                      = 11002
  description                  = "Prometheus: JMX exporter (11001) and node exporter (11002)"
}

resource "aws_cloudwatch_log_group" "broker" {
  #checkov:skip=CKV_AWS_338:retention is var.log_retention_days (30 days by default); keeping a year of broker logs is each deployment's choice and cost
  name              = "/aws/msk/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}

resource "aws_msk_configuration" "this" {
  name              = "${var.name}-${replace(var.kafka_version, ".", "-")}"
  description       = "Broker settings of ${var.name}: no implicit topics, replication defaults"
  server_properties = join("\n", [for k in sort(keys(var.server_properties)) : "${k} = ${var.server_properties[k]}"])

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_msk_cluster" "this" {
  cluster_name           = var.name
  kafka_version          = var.kafka_version
  number_of_broker_nodes = var.broker_count
  enhanced_monitoring    = var.enhanced_monitoring

  broker_node_group_info {
    instance_type   = var.instance_type
    client_subnets  = var.subnet_ids
    security_groups = [aws_security_group.this.id]

    storage_info {
      ebs_storage_info {
        volume_size = var.volume_size
      }
    }
  }

  client_authentication {
    unauthenticated = false

    sasl {
      iam = true
    }
  }

  configuration_info {
    arn      = aws_msk_configuration.this.arn
    revision = aws_msk_configuration.this.latest_revision
  }

  encryption_info {
    encryption_at_rest_kms_key_arn = var.kms_key_arn

    encryption_in_transit {
      client_broker = "TLS"
      in_cluster    = true
    }
  }

  logging_info {
    broker_logs {
      cloudwatch_logs {
        enabled   = true
        log_group = aws_cloudwatch_log_group.broker.name
      }
    }
  }

  open_monitoring {
    prometheus {
      jmx_exporter {
        enabled_in_broker = var.open_monitoring
      }
      node_exporter {
        enabled_in_broker = var.open_monitoring
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.broker_count % length(var.subnet_ids) == 0
      error_message = "MSK needs the broker count (${var.broker_count}) to be a multiple of the number of client subnets (${length(var.subnet_ids)})."
    }
  }
}

# Every broker's host name (the bootstrap string lists only some of them on larger clusters),
# for Prometheus to scrape the exporters of each.
data "aws_msk_broker_nodes" "this" {
  cluster_arn = aws_msk_cluster.this.arn
}
