"""Errors a user can cause with images, each with its HTTP status (appliance.errors)."""

from __future__ import annotations

from appliance.errors import ApplianceError, Conflict, InvalidRequest, NotFound, PayloadTooLarge


class ImageNotFound(NotFound):
    code = "image_not_found"


class ImageRefused(InvalidRequest):
    """An archive, manifest or layer that is malformed or could escape the store."""

    code = "image_refused"


class LayerTooLarge(PayloadTooLarge):
    code = "layer_too_large"


class DigestMismatch(ImageRefused):
    code = "digest_mismatch"


class RegistryError(ApplianceError):
    """The registry answered with an error, or could not be reached."""

    status = 502
    code = "registry_error"


class ImageInUse(Conflict):
    """Removing the image's last reference while sandboxes run in it."""

    code = "image_in_use"
