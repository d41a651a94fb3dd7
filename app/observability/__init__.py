"""What operators see of a running service: Prometheus metrics and structured logs."""
