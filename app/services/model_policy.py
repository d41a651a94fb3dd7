"""Which models an API client may name when it creates or re-embeds a collection.

Threat model: a client that may create collections must not make the server read arbitrary
files (a checkpoint path is hashed whole: `/proc/self/pagemap` is 275 GB), download from the hub,
or build any of open_clip's architectures with random weights (seconds to minutes of work and a
gigabyte of exports each). The operator lists what may be named in XMR_ALLOWED_MODELS; anything
else is refused before any file, network or model is touched.

Entries: `MODEL` allows any pretrained tag open_clip knows for it (and its default weights);
`MODEL/PRETRAINED` allows exactly that. Local checkpoint paths, `local-dir:` and `hf-hub:`
models and random weights (`MODEL/`, an empty tag) are allowed only when listed literally.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from app.services.errors import ModelNotAllowedError
from index.layout import ModelSpec

NAMED_ELSEWHERE = ("local-dir:", "hf-hub:")  # the model name carries its own weights
SETTING = "XMR_ALLOWED_MODELS"


@dataclass(frozen=True)
class AllowedModels:
    """The models API clients may use: any known tag of `any_tag`, exactly `exact`."""

    any_tag: dict[str, frozenset[str]]  # model -> the pretrained tags open_clip knows for it
    exact: frozenset[tuple[str, str | None]]

    @classmethod
    def parse(
        cls, entries: Iterable[str], known_tags: Callable[[str], Iterable[str]]
    ) -> AllowedModels:
        """`entries` as XMR_ALLOWED_MODELS lists them; `known_tags(model)`: open_clip's tags."""
        any_tag: dict[str, frozenset[str]] = {}
        exact: set[tuple[str, str | None]] = set()
        for entry in (e.strip() for e in entries):
            if not entry:
                continue
            if entry.startswith(NAMED_ELSEWHERE):
                exact.add((entry, None))
            elif "/" in entry:
                model, _, pretrained = entry.partition("/")
                exact.add((model, pretrained))
            else:
                any_tag[entry] = frozenset(known_tags(entry))
        return cls(any_tag, frozenset(exact))

    def check(self, spec: ModelSpec) -> None:
        """Raise ModelNotAllowedError unless `spec`'s model and weights are allowed."""
        if (spec.model, spec.pretrained) in self.exact:
            return
        tags = self.any_tag.get(spec.model)
        if tags is not None and (spec.pretrained is None or spec.pretrained in tags):
            return
        raise ModelNotAllowedError(
            f"this server does not offer that model and weights; the operator lists the models "
            f"clients may use in {SETTING} (allowed now: {self.describe()})"
        )

    def describe(self) -> str:
        names = sorted(self.any_tag) + sorted(
            f"{model}/{pretrained}" if pretrained is not None else model
            for model, pretrained in self.exact
            if not _is_local(model, pretrained)
        )
        return ", ".join(names) or "none"


def _is_local(model: str, pretrained: str | None) -> bool:
    """Paths are the operator's business: a refusal does not list them to clients."""
    return model.startswith("local-dir:") or "/" in (pretrained or "") or "\\" in (pretrained or "")


def allowed_models(
    listed: str | None,
    configured: ModelSpec,
    bundled: Iterable[str],
    known_tags: Callable[[str], Iterable[str]],
) -> AllowedModels:
    """XMR_ALLOWED_MODELS (comma-separated), or without it the configured model with its
    configured weights and the bundled models (with their own weights)."""
    if listed is not None and listed.strip():
        return AllowedModels.parse(listed.split(","), known_tags)
    exact = {(configured.model, configured.pretrained)}
    exact |= {(name, None) for name in bundled}
    return AllowedModels({}, frozenset(exact))
