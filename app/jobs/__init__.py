"""Background work: the job ledger (a contract with its SQLite implementation), the runner that
queues jobs and hands each to the handler of its kind, the pipeline batch jobs and re-embeddings
share, one module per kind of job, and the intake that stages a batch's uploads.

Jobs use the services; nothing in app/services/ imports from here, and no module here imports
the routers or FastAPI.
"""
