output "role_arn" {
  description = "ARN of the IAM role."
  value       = aws_iam_role.this.arn
}

output "association_id" {
  description = "ID of the Pod Identity association."
  value       = aws_eks_pod_identity_association.this.association_id
}
