"""The search page in a real headless browser (Chromium driven by Playwright).

It needs Debian's chromium (`make test` installs it where it can) and the playwright package;
where either is missing the test is skipped and says why.
"""

from __future__ import annotations

import base64
import io
import json
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
    shown = page.inner_text("#collection option[value=shapes]")
    assert shown == "shapes · shapes-tiny"  # its name and its model's, not the raw model id
    model_id = page.get_attribute("#collection option[value=shapes]", "title") or ""
    assert model_id.startswith("shapes-tiny/")  # that on hover
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


def composite_ids(server: str, request: dict, image: bytes | None = None) -> list[str]:
    """What POST /v1/search answers for the request the page should have sent."""
    if image is None:
        response = httpx.post(f"{server}/v1/search", json=request)
    else:
        response = httpx.post(
            f"{server}/v1/search",
            data={"request": json.dumps(request)},
            files=[("files", ("q.png", image, "image/png"))],
        )
    response.raise_for_status()
    return [h["id"] for h in response.json()["results"]]


def shown_ids(page: Any) -> list[str]:
    return page.locator("#results .hit .id").all_inner_texts()


def wait_for_status(page: Any, text: str) -> None:
    page.wait_for_function(
        "(text) => document.querySelector('#status').textContent.includes(text)", arg=text
    )


def test_text_image_and_not_words_combine_into_one_weighted_query_kept_in_the_url(
    browser: Any, indexed_server: str
) -> None:
    page = browser.new_page()
    page.goto(indexed_server + "/")
    page.fill("#query", "a red thing")
    page.fill("#not", "green")
    page.press("#query", "Enter")
    wait_for_status(page, "not “green”")
    expected = composite_ids(
        indexed_server,
        {
            "query": [{"text": "a red thing", "weight": 1}, {"text": "green", "weight": -0.5}],
            "target": "images",
            "k": 24,
            "mode": "vector",
        },
    )
    assert shown_ids(page) == expected
    assert "q=a+red+thing" in page.url and "not=green" in page.url
    # drop an image as well: text + image (weighted) + not
    blue = image_bytes("blue", size=(48, 48))
    transfer = page.evaluate_handle(DROP_FILE, base64.b64encode(blue).decode())
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    wait_for_status(page, "the image")
    page.fill("#image-weight", "1.5")
    page.dispatch_event("#image-weight", "change")
    page.wait_for_function(
        "() => document.querySelector('#image-weight-value').textContent === '1.5'"
    )
    wait_for_status(page, "results for")
    expected = composite_ids(
        indexed_server,
        {
            "query": [
                {"text": "a red thing", "weight": 1},
                {"image_file": 0, "weight": 1.5},
                {"text": "green", "weight": -0.5},
            ],
            "target": "images",
            "k": 24,
            "mode": "vector",
        },
        blue,
    )
    page.wait_for_function(
        "(ids) => [...document.querySelectorAll('#results .hit .id')]"
        ".map(e => e.textContent).join() === ids.join()",
        arg=expected,
    )
    page.close()


def test_keyword_mode_cutoff_and_the_back_button(browser: Any, indexed_server: str) -> None:
    page = browser.new_page()
    page.goto(indexed_server + "/")
    page.fill("#query", "plants")  # only green's metadata holds the word
    page.check("input[name=mode][value=keyword]")
    page.press("#query", "Enter")
    wait_for_status(page, "1 results")
    assert shown_ids(page) == ["green"] and "mode=keyword" in page.url
    page.check("input[name=mode][value=vector]")
    wait_for_status(page, "3 results")
    all_scores = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    cutoff = round(sorted(all_scores)[1] - 0.005, 2)  # keeps the best two
    page.fill("#min-score", str(cutoff))
    page.dispatch_event("#min-score", "change")
    wait_for_status(page, f"at or above {cutoff}")
    kept = [float(s) for s in page.locator("#results .score").all_inner_texts()]
    assert kept == [s for s in all_scores if s >= cutoff] and len(kept) == 2
    assert f"min_score={cutoff}" in page.url
    page.go_back()  # the uncut vector query
    wait_for_status(page, "3 results")
    page.go_back()  # the keyword query, restored from the URL
    wait_for_status(page, "1 results")
    assert page.input_value("#query") == "plants" and shown_ids(page) == ["green"]
    assert page.is_checked("input[name=mode][value=keyword]")
    # a shared link runs its query on opening
    shared = browser.new_page()
    shared.goto(indexed_server + "/?q=a+red+thing&target=texts&mode=hybrid")
    wait_for_status(shared, "3 results")
    assert shared.is_checked("input[name=target][value=texts]")
    expected = httpx.get(
        f"{indexed_server}/v1/search/text",
        params={"q": "a red thing", "target": "texts", "mode": "hybrid", "k": 24},
    ).json()["results"]
    assert shown_ids(shared) == [h["id"] for h in expected]
    page.close()
    shared.close()


# Holds back the answer to any search with a cutoff, so a newer search answers first.
SLOW_CUTOFF_ANSWERS = """
const realFetch = window.fetch;
window.slowAnswers = 0;  // answered or aborted
window.fetch = async (url, options) => {
  const slow = String(url).includes("min_score");
  try {
    const response = await realFetch(url, options);
    if (slow) await new Promise((resolve) => setTimeout(resolve, 1500));
    return response;
  } finally {
    if (slow) window.slowAnswers += 1;
  }
};
"""


def set_min_score(page: Any, value: str) -> None:
    page.eval_on_selector(
        "#min-score", "(el, v) => { el.value = v; el.dispatchEvent(new Event('change')); }", value
    )


def test_a_slow_earlier_answer_never_replaces_a_newer_one(
    browser: Any, indexed_server: str
) -> None:
    page = browser.new_page()
    page.add_init_script(SLOW_CUTOFF_ANSWERS)
    page.goto(indexed_server + "/")
    page.fill("#query", "a red thing")
    page.press("#query", "Enter")
    wait_for_status(page, "3 results")
    set_min_score(page, "0.99")  # its answer (no results) is held back
    set_min_score(page, "0")  # the newer search, answered at once
    wait_for_status(page, "3 results")
    page.wait_for_function("() => window.slowAnswers === 1")
    page.wait_for_timeout(100)
    assert page.inner_text("#status").startswith("3 results for “a red thing” in")
    assert len(shown_ids(page)) == 3
    page.close()


def test_less_like_this_pushes_the_query_away_from_an_item(
    browser: Any, indexed_server: str
) -> None:
    page = browser.new_page()
    page.goto(indexed_server + "/")
    page.fill("#query", "a red thing")
    page.press("#query", "Enter")
    wait_for_status(page, "3 results")
    page.locator(".hit[data-id=green] .less-like-this").click()
    wait_for_status(page, "1 items")
    expected = composite_ids(
        indexed_server,
        {
            "query": [{"text": "a red thing", "weight": 1}, {"item": "green", "weight": -0.5}],
            "target": "images",
            "k": 24,
            "mode": "vector",
        },
    )
    assert shown_ids(page) == expected and "green" not in expected
    assert "less like green" in page.inner_text("#steering") and "items=-green" in page.url
    page.close()


def test_the_duplicates_view_groups_copies(browser: Any, indexed_server: str) -> None:
    files = [("files", ("copy.png", image_bytes("red", size=(48, 48)), "image/png"))]
    httpx.post(
        f"{indexed_server}/v1/images", files=files, data={"ids": '["red-copy"]'}
    ).raise_for_status()
    page = browser.new_page()
    page.goto(indexed_server + "/")
    page.click("#duplicates-open")
    page.fill("#threshold", "0.99")
    page.click("#duplicates-find")
    wait_for_status(page, "1 groups")
    assert page.get_attribute("#groups .group", "data-ids") == "red,red-copy"
    wait_for_thumbnails_in(page, "#groups img")
    assert "view=duplicates" in page.url and "threshold=0.99" in page.url
    page.reload()  # the view is in the URL too
    wait_for_status(page, "1 groups")
    page.close()


def wait_for_thumbnails_in(page: Any, selector: str) -> None:
    page.wait_for_function(
        "(selector) => [...document.querySelectorAll(selector)]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        arg=selector,
    )


def test_the_grid_fetches_thumbnails_only_and_filters_by_capture_date(
    browser: Any, live_server: str
) -> None:
    from tests.photos import camera_exif, encoded, noisy_photo

    taken = {"may": "2025:05:20 09:00:00", "june": "2025:06:14 10:00:00", "july": None}
    files, originals = [], {}
    for n, (name, date) in enumerate(taken.items()):
        photo = Image.open(io.BytesIO(noisy_photo(n, (1600, 1200))))
        originals[name] = encoded(photo, "JPEG", camera_exif(date), quality=92)
        files.append(("files", (f"{name}.jpg", originals[name], "image/jpeg")))
    httpx.post(
        f"{live_server}/v1/images", files=files, data={"ids": json.dumps(list(taken))}
    ).raise_for_status()
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    fetched: dict[str, int] = {}

    def count(response: Any) -> None:
        if "/items/" in response.url:
            fetched[response.url] = len(response.body())

    page.on("response", count)
    page.goto(live_server + "/")
    page.fill("#query", "a photo")
    page.press("#query", "Enter")
    page.wait_for_function("() => document.querySelectorAll('#results .hit img').length === 3")
    wait_for_thumbnails(page)
    for _ in range(100):  # the response events reach this side a little after the images load
        if len(fetched) >= 3:
            break
        page.wait_for_timeout(50)
    assert len(fetched) == 3 and all("/thumbnail?v=" in url for url in fetched), fetched
    biggest = min(len(data) for data in originals.values())
    assert sum(fetched.values()) < biggest, (fetched, biggest)  # three thumbnails < one photo
    # each card shows its id and the day it was taken, and its buttons fit inside it
    cards = page.locator("#results .hit")
    shown = {
        cards.nth(n).locator(".id").inner_text(): cards.nth(n).locator(".taken").all_inner_texts()
        for n in range(3)
    }
    assert shown == {"may": ["2025-05-20"], "june": ["2025-06-14"], "july": []}
    for n in range(3):
        card = cards.nth(n).bounding_box()
        for name in ("more-like-this", "less-like-this"):
            box = cards.nth(n).locator(f"button.{name}").bounding_box()
            assert card and box and box["x"] + box["width"] <= card["x"] + card["width"] + 0.5
            assert box["y"] + box["height"] <= card["y"] + card["height"] + 0.5
    # a click opens the original
    with page.expect_response(lambda r: r.url.endswith("/content")) as original:
        page.locator("#results .hit img").first.click()
    assert len(original.value.body()) in {len(data) for data in originals.values()}
    page.wait_for_function("() => document.getElementById('details-image').naturalWidth > 0")
    page.keyboard.press("Escape")
    # a capture-date range: only June
    page.fill("#taken-from", "2025-06-01")
    page.fill("#taken-to", "2025-06-30")
    page.dispatch_event("#taken-to", "change")
    page.wait_for_function("() => document.querySelectorAll('#results .hit').length === 1")
    assert page.locator("#results .hit .id").all_inner_texts() == ["june"]
    assert "from=2025-06-01" in page.url and "to=2025-06-30" in page.url
    page.close()
