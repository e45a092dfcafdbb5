# tflint with its bundled terraform ruleset, every rule on (crates/ebb/tests/real/terraform.rs
# runs it over this directory and each module). The AWS ruleset plugin
# (terraform-linters/tflint-ruleset-aws) is downloaded by `tflint --init` from GitHub
# releases, which this project's machines cannot reach, so it is not enabled here; enable
# it where it can be installed:
#
#   plugin "aws" {
#     enabled = true
#     version = "<a release of tflint-ruleset-aws>"
#     source  = "github.com/terraform-linters/tflint-ruleset-aws"
#   }
config {
  call_module_type = "local"
}

plugin "terraform" {
  enabled = true
  preset  = "all"
}
