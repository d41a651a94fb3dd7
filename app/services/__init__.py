"""What requests do, without HTTP: decode, encode, store, search, run batch jobs."""
