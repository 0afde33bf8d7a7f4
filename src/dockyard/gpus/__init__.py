"""GPU inventory (NVML, or a declared simulation) and allocation by UUID."""
