"""What requests do, without HTTP: decode, encode, store, search, tag, hold collections and
models. No module here imports FastAPI, the routers, the schemas or app/jobs/; errors are the
domain's own (app/services/errors.py), mapped to status codes in app/errors.py."""
