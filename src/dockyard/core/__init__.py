"""The domain vocabulary shared by every layer: status enums, loop names and the one workload spec."""
