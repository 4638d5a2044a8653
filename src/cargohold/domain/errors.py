"""Domain exceptions. Services raise these; the web edge maps each to a status and code once."""

from __future__ import annotations

from typing import Any


class RegistryError(Exception):
    """Base of every error a client may see. `detail` is echoed in the error JSON."""

    def __init__(self, message: str = "", detail: Any = None) -> None:
        super().__init__(message or self.__class__.__doc__ or self.__class__.__name__)
        self.message = message or (self.__class__.__doc__ or "").strip()
        self.detail = detail


class BlobUnknown(RegistryError):
    """blob unknown to registry"""


class BlobUploadInvalid(RegistryError):
    """blob upload invalid"""


class RangeInvalid(BlobUploadInvalid):
    """requested range is not satisfiable"""

    def __init__(self, message: str = "", detail: Any = None, *, size: int = 0) -> None:
        super().__init__(message, detail)
        self.size = size


class RangeNotSatisfiable(RegistryError):
    """requested range is not satisfiable"""

    def __init__(self, message: str = "", detail: Any = None, *, size: int = 0) -> None:
        super().__init__(message, detail)
        self.size = size


class BlobUploadUnknown(RegistryError):
    """blob upload unknown to registry"""


class DigestInvalid(RegistryError):
    """provided digest did not match uploaded content"""


class ManifestBlobUnknown(RegistryError):
    """manifest references a manifest or blob unknown to registry"""


class ManifestInvalid(RegistryError):
    """manifest invalid"""


class ManifestUnknown(RegistryError):
    """manifest unknown to registry"""


class ManifestTooLarge(RegistryError):
    """manifest exceeds the size limit"""


class NameInvalid(RegistryError):
    """invalid repository name"""


class NameUnknown(RegistryError):
    """repository name not known to registry"""


class SizeInvalid(RegistryError):
    """provided length did not match content length"""


class TagInvalid(RegistryError):
    """invalid tag"""


class PaginationInvalid(RegistryError):
    """invalid number of results requested"""


class Unauthorized(RegistryError):
    """authentication required"""


class Denied(RegistryError):
    """requested access to the resource is denied"""


class QuotaExceeded(Denied):
    """the namespace is over its storage quota"""


class Referenced(RegistryError):
    """the content is still referenced and cannot be deleted"""


class Unsupported(RegistryError):
    """the operation is unsupported"""


class TooManyRequests(RegistryError):
    """too many requests"""
