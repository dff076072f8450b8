"""Training jobs: the job body and the multi-process runner (torchrun child)."""
