"""What operators see of a running service: Prometheus metrics and structured logs. Reads
the services' state; nothing here changes it."""
