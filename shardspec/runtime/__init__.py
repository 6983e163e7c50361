"""The serving runtime: DP scheduler -> input packer -> one jitted step -> sampler."""
