"""Tagging jobs: a collection's items labelled batch by batch from the job's cursor."""

from __future__ import annotations

from app.jobs.context import JobContext
from app.services.registry import CollectionRegistry
from app.services.tagging import TagRequest, items_to_tag, tag_next


class TaggingJob:
    """The handler of `classify` jobs; resumable at the cursor it saves after each batch."""

    def __init__(self, collections: CollectionRegistry) -> None:
        self._collections = collections

    async def run(self, job: JobContext) -> None:
        params = job.params
        up_to = int(params.pop("up_to_label"))
        request = TagRequest(**params)
        collection = self._collections.get(job.view.collection)
        await job.set_status("running")
        cursor, done = job.view.cursor, job.view.done
        async with collection.use() as pin:
            total = done + await items_to_tag(pin.store, job.pool, request, cursor, up_to)
        await job.set_cursor(cursor, total, done)
        while True:
            job.check()
            async with collection.use(write=True, model=True) as pin:
                step = await tag_next(
                    pin.store,
                    pin.classify,
                    job.pool,
                    request,
                    cursor,
                    up_to,
                    collection.limits.max_metadata_bytes,
                )
            if step is None:
                break
            cursor, tagged = step
            done += tagged
            await job.set_cursor(cursor, total, done)
        await job.set_status("done")
