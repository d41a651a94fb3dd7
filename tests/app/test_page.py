"""The search page in a real headless browser (Chromium driven by Playwright).

It needs Debian's chromium (`make test` installs it where it can) and the playwright package;
where either is missing the test is skipped and says why.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image

from tests.conftest import image_bytes

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# the probe's flags: no sandbox as root, and no background calls to a network that is closed
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no Chromium on this machine (apt-get install chromium); browser test skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def wait_for_thumbnails(page: Any) -> None:
    # a function, not a string: Playwright evals a string predicate, which the CSP forbids
    page.wait_for_function(
        "() => [...document.querySelectorAll('#results img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )


@pytest.fixture
def indexed_server(live_server: str) -> str:
    files = [
        ("files", (f"{c}.png", image_bytes(c, size=(48, 48)), "image/png"))
        for c in ("red", "green", "blue")
    ]
    ids = '["red", "green", "blue"]'
    meta = '[{"album": "warm"}, {"album": "plants"}, {"album": "sky"}]'
    httpx.post(
        f"{live_server}/v1/images", files=files, data={"ids": ids, "metadata": meta}
    ).raise_for_status()
    texts = [{"text": f"a {c} thing", "id": f"t-{c}"} for c in ("red", "green", "blue")]
    httpx.post(f"{live_server}/v1/texts", json={"items": texts}).raise_for_status()
    return live_server


def test_text_search_shows_loaded_thumbnails_scores_and_metadata(
    browser: Any, indexed_server: str
) -> None:
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(  # the Content-Security-Policy blocks nothing the page itself needs
        "console",
        lambda m: errors.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.goto(indexed_server + "/")
    page.fill("#query", "a red circle")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .hit.image img")
    wait_for_thumbnails(page)
    cards = page.locator("#results .hit")
    assert cards.count() == 3
    assert sorted(page.locator("#results .hit .id").all_inner_texts()) == ["blue", "green", "red"]
    scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert scores == sorted(scores, reverse=True)
    assert '"album"' in (cards.first.get_attribute("title") or "")
    assert "3 results" in page.inner_text("#status")
    assert not errors


DROP_FILE = """async (b64) => {
    const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], "query.png", { type: "image/png" }));
    return transfer;
}"""


def test_dropping_an_image_finds_texts_and_more_like_this_finds_images(
    browser: Any, indexed_server: str, tmp_path: Path
) -> None:
    page = browser.new_page()
    page.goto(indexed_server + "/")
    page.check("input[name=target][value=texts]")
    query = base64.b64encode(image_bytes("blue", size=(48, 48))).decode()
    transfer = page.evaluate_handle(DROP_FILE, query)
    page.dispatch_event("#drop", "dragover", {"dataTransfer": transfer})
    assert "over" in (page.get_attribute("#drop", "class") or "")
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    page.wait_for_selector("#results .hit.text")
    texts = page.locator("#results .hit.text .text").all_inner_texts()
    assert sorted(texts) == ["a blue thing", "a green thing", "a red thing"]
    assert page.is_visible("#query-preview")

    page.check("input[name=target][value=images]")
    page.fill("#query", "anything")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .hit.image")
    page.locator(".hit[data-id=blue] .more-like-this").click()
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('items like blue')"
    )
    shown = page.locator("#results .hit .id").all_inner_texts()
    assert sorted(shown) == ["green", "red"]  # by blue's stored vector, blue itself left out
    expected = httpx.get(
        f"{indexed_server}/v1/items/blue/similar", params={"k": 24, "target": "images"}
    ).json()["results"]
    assert shown == [h["id"] for h in expected]


def test_the_file_picker_searches_with_an_image_too(
    browser: Any, indexed_server: str, tmp_path: Path
) -> None:
    query = tmp_path / "query.png"
    Image.new("RGB", (48, 48), "green").save(query)
    page = browser.new_page()
    page.goto(indexed_server + "/")
    page.set_input_files("#query-file", str(query))  # target images: image -> images
    page.wait_for_selector("#results .hit.image")
    assert page.locator("#results .hit").first.get_attribute("data-id") == "green"


def test_images_can_be_indexed_from_the_page(
    browser: Any, live_server: str, tmp_path: Path
) -> None:
    upload = tmp_path / "sunset.png"
    Image.new("RGB", (40, 40), "orange").save(upload)
    page = browser.new_page()
    page.goto(live_server + "/")
    page.click("#tools summary")
    page.set_input_files("#upload-files", str(upload))
    page.click("#upload-form button")
    page.wait_for_function(
        "() => document.querySelector('#status').textContent.includes('Indexed 1')"
    )
    assert httpx.get(f"{live_server}/v1/items/sunset.png").status_code == 200


def test_the_page_asks_for_the_key_and_keeps_it(
    browser: Any, settings: Any, tiny_encoder: Any
) -> None:
    """With XMR_API_KEY set: the page loads without it, says 401 until the key is entered, then
    searches (thumbnails included, fetched with the key) and remembers the key after a reload."""
    from pydantic import SecretStr

    from app.main import create_app
    from tests.conftest import serve_in_thread

    keyed = settings.model_copy(update={"api_key": SecretStr("page-key")})
    with serve_in_thread(create_app(keyed, encoder=tiny_encoder)) as url:
        files = [("files", ("red.png", image_bytes("red", size=(48, 48)), "image/png"))]
        httpx.post(
            f"{url}/v1/images", files=files, headers={"X-API-Key": "page-key"}
        ).raise_for_status()
        page = browser.new_page()
        page.goto(url + "/")
        page.fill("#query", "red")
        page.press("#query", "Enter")
        page.wait_for_selector("#status.error")
        assert "401" in page.inner_text("#status")
        page.click("#tools summary")
        page.fill("#api-key", "page-key")
        page.dispatch_event("#api-key", "change")
        page.press("#query", "Enter")
        page.wait_for_selector("#results .hit.image img")
        wait_for_thumbnails(page)
        page.reload()
        assert page.input_value("#api-key") == "page-key"
        page.fill("#query", "red")
        page.press("#query", "Enter")
        page.wait_for_selector("#results .hit.image")
        page.close()


def test_the_collection_picker_searches_the_chosen_collection_and_is_remembered(
    browser: Any, indexed_server: str
) -> None:
    created = httpx.post(
        f"{indexed_server}/v1/collections",
        json={"name": "shapes", "model": "shapes-tiny"},
        timeout=120,
    )
    assert created.status_code == 201, created.text
    files = [("files", ("cyan.png", image_bytes("cyan", size=(48, 48)), "image/png"))]
    httpx.post(
        f"{indexed_server}/v1/collections/shapes/images", files=files, data={"ids": '["cyan"]'}
    ).raise_for_status()
    page = browser.new_page()
    page.goto(indexed_server + "/")
    page.wait_for_selector("#collection option[value=shapes]", state="attached")
    assert "shapes-tiny/" in page.inner_text("#collection option[value=shapes]")
    page.select_option("#collection", "shapes")
    page.fill("#query", "a cyan square")
    page.press("#query", "Enter")
    page.wait_for_selector("#results .hit.image img")
    wait_for_thumbnails(page)  # its content URL is the collection's
    assert page.locator("#results .hit .id").all_inner_texts() == ["cyan"]
    page.reload()
    page.wait_for_selector("#collection option[value=shapes]", state="attached")
    assert page.input_value("#collection") == "shapes"
    page.select_option("#collection", "default")
    page.fill("#query", "a cyan square")
    page.press("#query", "Enter")
    page.wait_for_function("() => document.querySelectorAll('#results .hit').length === 3")
    page.close()
