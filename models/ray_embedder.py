"""Images embedded on a Ray cluster, for the batch jobs of a running server (XMR_RAY_ADDRESS).

Each model in use gets `workers` Ray actors, spread over the cluster's nodes (the SPREAD
strategy: unpinned work otherwise stays on the head node), each holding the model once (on a
GPU of its node where the cluster has GPUs) and turning image bytes into unit vectors:
decoding, preprocessing and encoding all happen there. The actors are named by the model and
detached, so every replica uses the same ones (a replica's own actors would hold the cluster's
CPUs while it idles and leave none to the replica with work). The server sends a batch's bytes
and gets back a vector or a decode error per image; it stores them itself, through the normal
write path. A worker that dies is restarted by Ray, and the batch it held is sent again.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from models.photos import Photo

logger = logging.getLogger(__name__)

ATTEMPTS = 4  # sends of one batch before its failure is the job's
START_TIMEOUT_S = 300.0  # for the workers of a model to be placed and load it
RETRY_PAUSE_S = 1.0


@dataclass(frozen=True)
class RemoteModel:
    """Which model a worker loads: the collection's, as the server loads it."""

    model: str
    pretrained: str | None
    precision: str = "auto"
    runtime: str = "auto"


class ImageWorker:
    """The Ray actor: one model in memory; image bytes in, vectors or errors out."""

    def __init__(self, spec: RemoteModel, device: str, max_pixels: int) -> None:
        from models.open_clip_encoder import OpenClipEncoder
        from models.options import LoadOptions

        options = LoadOptions(device=device, precision=spec.precision, runtime=spec.runtime)
        self._encoder = OpenClipEncoder.load(spec.model, spec.pretrained, options)
        self._max_pixels = max_pixels

    def embed(self, blobs: Sequence[bytes]) -> tuple[np.ndarray, list[str], list[Photo | None]]:
        """(vectors, errors, photos): a row per image; an image that does not decode has an
        error, a row of zeros and no photo."""
        from models import ImageDecodeError, decode_image
        from models.photos import describe, draft_for_photo

        draft_size = draft_for_photo(self._encoder.image_size * 2)
        prepared, errors = [], []
        photos: list[Photo | None] = []
        for data in blobs:
            try:
                image = decode_image(data, self._max_pixels, draft_size=draft_size)
                prepared.append(self._encoder.prepare_image(image))
                photos.append(describe(data, image))
                errors.append("")
            except ImageDecodeError as e:
                errors.append(str(e))
                photos.append(None)
        vectors = np.zeros((len(blobs), self._encoder.dim), dtype=np.float32)
        good = [slot for slot, error in enumerate(errors) if not error]
        if good:
            vectors[good] = self._encoder.encode_prepared(prepared)
        return vectors, errors, photos

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())


class RayImageEmbedder:
    """Actors per model on the Ray cluster at `address`; connects on first use."""

    def __init__(self, address: str, workers: int, max_pixels: int) -> None:
        self.address = address
        self.workers = workers
        self._max_pixels = max_pixels
        self._actors: dict[RemoteModel, list[Any]] = {}
        self._turn: dict[RemoteModel, itertools.cycle[int]] = {}
        self._lock = threading.Lock()

    def _connect(self) -> None:
        import ray

        if not ray.is_initialized():
            ray.init(
                address=self.address,
                namespace="xmr",
                log_to_driver=False,
                ignore_reinit_error=True,
            )

    def _actors_for(self, spec: RemoteModel) -> list[Any]:
        with self._lock:
            actors = self._actors.get(spec)
            if actors is None:
                actors = self._actors[spec] = self._start_actors(spec)
                self._turn[spec] = itertools.cycle(range(len(actors)))
            return actors

    def _start_actors(self, spec: RemoteModel) -> list[Any]:
        import ray

        self._connect()
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= self.workers else 0
        device = "cuda" if gpus else "cpu"
        digest = hashlib.sha256(repr(spec).encode()).hexdigest()[:12]
        actors = [
            ray.remote(ImageWorker)
            .options(
                name=f"xmr-images-{digest}-{number}",
                namespace="xmr",
                lifetime="detached",  # shared by every replica, whichever started it
                get_if_exists=True,
                num_cpus=1,
                num_gpus=gpus,
                max_restarts=-1,  # a worker killed is started again, its model loaded again
                max_task_retries=2,
                scheduling_strategy="SPREAD",
            )
            .remote(spec, device, self._max_pixels)
            for number in range(self.workers)
        ]
        try:  # each placed with its model loaded, and where
            nodes = set(ray.get([a.node.remote() for a in actors], timeout=START_TIMEOUT_S))  # type: ignore[attr-defined]
        except ray.exceptions.GetTimeoutError as e:
            raise RuntimeError(
                f"the Ray cluster did not start {self.workers} workers for {spec.model} within "
                f"{START_TIMEOUT_S:.0f} s: too few free CPUs or GPUs for XMR_RAY_WORKERS?"
            ) from e
        logger.warning(
            "using %d Ray workers for %s on %d nodes", len(actors), spec.model, len(nodes)
        )
        return actors

    async def embed(
        self, spec: RemoteModel, blobs: Sequence[bytes]
    ) -> tuple[np.ndarray, list[str], list[Photo | None]]:
        """Vectors, decode errors and photos for `blobs`, from one of the model's workers; a
        batch whose worker died is sent again (to the restarted worker or another)."""
        import ray

        actors = await asyncio.to_thread(self._actors_for, spec)
        payload = list(blobs)
        for attempt in range(1, ATTEMPTS + 1):
            actor = actors[next(self._turn[spec])]
            try:
                vectors, errors, photos = await actor.embed.remote(payload)
                return vectors, errors, photos
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as e:
                if attempt == ATTEMPTS:
                    raise
                logger.warning("a Ray worker was lost (%s); sending its batch again", e)
                await asyncio.sleep(RETRY_PAUSE_S)
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Disconnect; the workers stay for the other replicas (`ray kill` or a cluster
        restart removes them)."""
        import ray

        with self._lock:
            self._actors.clear()
        if ray.is_initialized():
            ray.shutdown()
