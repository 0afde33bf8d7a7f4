"""The log canary's harness and its probes, by concern; tests/test_log_canary.py runs them."""
