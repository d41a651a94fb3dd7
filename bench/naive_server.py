"""The naive baseline: FastAPI + open_clip + FAISS, each request encoded on its own at 77 tokens.

XMR_MODEL=ViT-B-32 XMR_PRETRAINED= uvicorn bench.naive_server:app --port 8100
"""

import io
import os

import faiss
import numpy as np
import open_clip
import torch
from fastapi import FastAPI, File, UploadFile
from PIL import Image

torch.manual_seed(0)
MODEL = os.environ.get("XMR_MODEL", "ViT-B-32")
model, _, preprocess = open_clip.create_model_and_transforms(
    MODEL, pretrained=os.environ.get("XMR_PRETRAINED") or None
)
model.eval()
tokenizer = open_clip.get_tokenizer(MODEL)
dim = model.text_projection.shape[1]
index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
names: list[str] = []
app = FastAPI()


def normalized(x: torch.Tensor) -> np.ndarray:
    return (x / x.norm(dim=-1, keepdim=True)).numpy().astype("float32")


@app.post("/images")
def add_image(file: UploadFile = File(...)) -> dict:
    image = Image.open(io.BytesIO(file.file.read())).convert("RGB")
    with torch.no_grad():
        vector = normalized(model.encode_image(preprocess(image).unsqueeze(0)))
    index.add_with_ids(vector, np.array([len(names)], dtype="int64"))
    names.append(file.filename or str(len(names)))
    return {"id": len(names) - 1}


@app.get("/search")
def search(q: str, k: int = 10) -> dict:
    with torch.no_grad():
        vector = normalized(model.encode_text(tokenizer([q])))
    scores, ids = index.search(vector, k)
    return {
        "results": [
            {"id": names[i], "score": float(s)}
            for s, i in zip(scores[0], ids[0], strict=True)
            if i >= 0
        ]
    }
