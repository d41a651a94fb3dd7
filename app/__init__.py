"""app/ speaks HTTP: xmr's FastAPI service, built by `app.main.create_app`.

`routers/` map requests to services and their answers to `schemas/` (through `responses.py` and
`parsing.py`); `services/` do the work without HTTP; `jobs/` run work in the background;
`assembly.py` builds it all once at start-up; `errors.py` is the one table of status codes.
app/ reaches models/ only to load a model and index/ through its types and its stores' modules:
importing any app module loads neither PyTorch, open_clip, FAISS nor pymilvus (the layering
test checks it).
"""
