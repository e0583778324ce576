"""Tests under real MPI ranks (mpiexec -n 2)."""
