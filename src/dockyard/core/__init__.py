"""The domain vocabulary shared by every layer: status enums and the one workload spec."""
