"""asteroid-hpc: ASTEROID spatiotemporal transformer forecasting of molecular dynamics on HPC clusters."""

__version__ = "0.1.0"
