"""Tests against a real local Slurm cluster (tools/slurm_local.sh)."""
