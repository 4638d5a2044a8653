"""Parse and validate manifest documents, and list what they reference.

The stored bytes are always the pushed bytes: parsing only reads them, so
unknown fields are preserved byte for byte."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cargohold.domain import mediatypes as mt
from cargohold.domain.digests import Digest, parse_digest
from cargohold.domain.errors import DigestInvalid, ManifestInvalid, Unsupported

MAX_DESCRIPTORS = 4096  # layers in one manifest, or children in one index


@dataclass(frozen=True, slots=True)
class Descriptor:
    media_type: str
    digest: Digest
    size: int
    artifact_type: str | None = None
    annotations: Mapping[str, str] | None = None
    urls: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ParsedManifest:
    media_type: str
    config: Descriptor | None  # image manifests only
    layers: tuple[Descriptor, ...]  # image manifests only
    children: tuple[Descriptor, ...]  # indexes only
    subject: Descriptor | None
    artifact_type: str | None
    annotations: Mapping[str, str] | None

    @property
    def is_index(self) -> bool:
        return self.media_type in mt.INDEXES

    @property
    def effective_artifact_type(self) -> str | None:
        """What the referrers API reports: artifactType, else the config media type."""
        if self.artifact_type:
            return self.artifact_type
        if self.config is not None:
            return self.config.media_type
        return None

    def required_blobs(self) -> list[Digest]:
        """Blobs that must be present in the repository for the manifest to be accepted."""
        out: list[Digest] = []
        if self.config is not None:
            out.append(self.config.digest)
        for layer in self.layers:
            if layer.urls and layer.media_type in mt.DOCKER_FOREIGN_LAYERS:
                continue  # non-distributable layers live elsewhere by design
            out.append(layer.digest)
        return out


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ManifestInvalid(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's parser would accept NaN and Infinity


def _load(body: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except ManifestInvalid:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestInvalid("manifest is not valid UTF-8 JSON") from exc
    if not isinstance(doc, dict):
        raise ManifestInvalid("manifest must be a JSON object")
    return doc


def _string(value: Any, field: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    # Printable: no control characters or lone surrogates, which no media type has and
    # the databases cannot store.
    if not isinstance(value, str) or not value or len(value) > 255 or not value.isprintable():
        raise ManifestInvalid(f"{field} must be a non-empty printable string")
    return value


def _annotations(value: Any, field: str) -> Mapping[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ManifestInvalid(f"{field} must map strings to strings")
    return value


def _descriptor(value: Any, field: str) -> Descriptor:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{field} must be a descriptor object")
    media_type = _string(value.get("mediaType"), f"{field}.mediaType")
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ManifestInvalid(f"{field}.size must be a non-negative integer")
    digest_text = value.get("digest")
    if not isinstance(digest_text, str):
        raise ManifestInvalid(f"{field}.digest must be a string")
    try:
        digest = parse_digest(digest_text)
    except (DigestInvalid, Unsupported) as exc:
        raise ManifestInvalid(f"{field}.digest: {exc.message}") from exc
    urls = value.get("urls") or ()
    if not isinstance(urls, list | tuple) or not all(isinstance(u, str) for u in urls):
        raise ManifestInvalid(f"{field}.urls must be a list of strings")
    assert media_type is not None
    return Descriptor(
        media_type=media_type,
        digest=digest,
        size=size,
        artifact_type=_string(value.get("artifactType"), f"{field}.artifactType", optional=True),
        annotations=_annotations(value.get("annotations"), f"{field}.annotations"),
        urls=tuple(urls),
    )


def _descriptor_list(value: Any, field: str) -> tuple[Descriptor, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ManifestInvalid(f"{field} must be a list")
    if len(value) > MAX_DESCRIPTORS:
        raise ManifestInvalid(f"{field} has more than {MAX_DESCRIPTORS} entries")
    return tuple(_descriptor(item, f"{field}[{i}]") for i, item in enumerate(value))


def resolve_media_type(doc: Mapping[str, Any], content_type: str | None) -> str:
    """Decide the document's type from its mediaType field and the request Content-Type.

    The two must agree when both are present (CVE-2021-41190): a document must not be
    readable as an index through one header and as an image through another."""
    declared = doc.get("mediaType")
    if declared is not None and not isinstance(declared, str):
        raise ManifestInvalid("mediaType must be a string")
    header = (content_type or "").split(";", 1)[0].strip().lower() or None
    if header in mt.SCHEMA1_TYPES or declared in mt.SCHEMA1_TYPES or doc.get("schemaVersion") == 1:
        raise ManifestInvalid(
            "Docker schema 1 manifests are not supported: push Docker schema 2 or OCI"
        )
    if declared and header and declared != header:
        raise ManifestInvalid(f"mediaType {declared!r} does not match Content-Type {header!r}")
    media_type = declared or header
    if media_type is None:
        raise ManifestInvalid("manifest has no mediaType and the request no Content-Type")
    if media_type not in mt.MANIFEST_TYPES:
        raise ManifestInvalid(f"unsupported manifest media type {media_type!r}")
    return media_type


def parse_manifest(body: bytes, content_type: str | None) -> ParsedManifest:
    doc = _load(body)
    media_type = resolve_media_type(doc, content_type)
    if doc.get("schemaVersion") != 2:
        raise ManifestInvalid("schemaVersion must be 2")
    has_image_fields = "config" in doc or "layers" in doc
    has_index_fields = "manifests" in doc
    if has_image_fields and has_index_fields:
        raise ManifestInvalid("a manifest cannot have both manifests and config/layers")
    subject = _descriptor(doc["subject"], "subject") if doc.get("subject") is not None else None
    artifact_type = _string(doc.get("artifactType"), "artifactType", optional=True)
    annotations = _annotations(doc.get("annotations"), "annotations")
    if media_type in mt.INDEXES:
        if has_image_fields:
            raise ManifestInvalid("an index cannot have config or layers")
        if "manifests" not in doc:
            raise ManifestInvalid("an index must have a manifests list")
        children = _descriptor_list(doc.get("manifests"), "manifests")
        return ParsedManifest(media_type, None, (), children, subject, artifact_type, annotations)
    if has_index_fields:
        raise ManifestInvalid("an image manifest cannot have a manifests list")
    if "config" not in doc:
        raise ManifestInvalid("an image manifest must have a config descriptor")
    config = _descriptor(doc["config"], "config")
    if media_type == mt.DOCKER_MANIFEST and "layers" not in doc:
        raise ManifestInvalid("a Docker schema 2 manifest must have layers")
    layers = _descriptor_list(doc.get("layers"), "layers")
    return ParsedManifest(media_type, config, layers, (), subject, artifact_type, annotations)
