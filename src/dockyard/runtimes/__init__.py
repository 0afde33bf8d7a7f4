"""Runtimes: where workloads really run, behind one small contract (`base.Runtime`)."""
