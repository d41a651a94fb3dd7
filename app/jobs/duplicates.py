"""Duplicates jobs: one scan of a collection's index in the background pool, its groups kept
as the job's result."""

from __future__ import annotations

from app.jobs.context import JobContext
from app.jobs.runner import JobRunner
from app.services.duplicates import DuplicatesPage, DuplicatesQuery, find_duplicates
from app.services.registry import CollectionRegistry
from app.services.search import SearchService


async def duplicates_now_or_queued(
    search: SearchService, jobs: JobRunner, collection: str, query: DuplicatesQuery
) -> DuplicatesPage | str:
    """The page at once while the collection is small enough (XMR_DUPLICATES_SYNC_LIMIT),
    else the id of a job that finds it."""
    page = await search.duplicates(query)
    if page is not None:
        return page
    return await jobs.submit_over_items(collection, "duplicates", query.params())


class DuplicatesJob:
    """The handler of `duplicates` jobs; the scan reports progress, and stops, through the job."""

    def __init__(self, collections: CollectionRegistry) -> None:
        self._collections = collections

    async def run(self, job: JobContext) -> None:
        query = DuplicatesQuery(**job.params)
        collection = self._collections.get(job.view.collection)
        await job.set_status("running")
        background = self._collections.pools.background
        async with collection.use() as pin:
            page = await find_duplicates(pin.store, background, query, job.progress)
        await job.set_result(page.as_json())
        await job.set_status("done")
