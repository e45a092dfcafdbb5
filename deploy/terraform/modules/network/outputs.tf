output "vpc_id" {
  description = "ID of the VPC."
  value       = aws_vpc.this.id
}

output "private_subnet_ids" {
  description = "Private subnets, one per zone in the order of var.azs."
  value       = aws_subnet.private[*].id
}

output "public_subnet_ids" {
  description = "Public subnets, one per zone in the order of var.azs."
  value       = aws_subnet.public[*].id
}

output "nat_public_ips" {
  description = "Public addresses the private subnets' traffic leaves from."
  value       = aws_eip.nat[*].public_ip
}
