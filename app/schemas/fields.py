"""Field types every body shares: metadata that can be stored and sent back, texts, targets."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, StringConstraints

from index import InvalidMetadataError, Kind, check_metadata_shape

Target = Literal["images", "texts"]


JSONObject = dict[str, Any]


def storable_metadata(value: JSONObject | None) -> JSONObject | None:
    """Refuse metadata that could not be sent back: too deep, or NaN and infinities in it.

    Its size is checked by the services, against XMR_MAX_METADATA_BYTES.
    """
    if value is not None:
        try:
            check_metadata_shape(value, "")
        except InvalidMetadataError as e:
            raise ValueError(str(e).removeprefix(": ")) from e
    return value


Metadata = Annotated[JSONObject | None, AfterValidator(storable_metadata)]


TARGET_KIND: dict[str, Kind] = {"images": "image", "texts": "text"}


# every text a route takes (to index, to search with, to embed): stored whole and returned
# with each hit, encoded cut to the model's context (models.text)
MAX_TEXT_CHARS = 100_000


QueryText = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]  # blank: validators
