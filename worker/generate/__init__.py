"""Generation jobs: the continuously batched engine and the job body around it."""
