"""xmr's HTTP service."""
