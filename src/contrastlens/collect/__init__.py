"""The failure-case collection pipeline: generation, rollout localisation, the resumable run."""
