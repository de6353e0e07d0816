"""Languages inside images: a profile's tools looked up in an image, and an image run's argv.

The sandbox service asks here for the `ResolvedLanguage` of a run in an image: a language
profile whose tools were found in the image's root (profiles.resolve_in_image), or, for a run
that brings its own `command`, the command profile with the image attached.
"""

from __future__ import annotations

import asyncio

from appliance.errors import ApplianceError, InvalidRequest
from appliance.sandbox.images.service import ImageService
from appliance.sandbox.profiles import (
    COMMAND_PROFILE,
    ProfileCatalog,
    ResolvedLanguage,
    resolve_in_image,
)


class ImageLanguages:
    def __init__(self, catalog: ProfileCatalog, images: ImageService) -> None:
        self.catalog = catalog
        self.images = images

    async def resolve(self, ref: str, language: str) -> ResolvedLanguage:
        """`language` (or a `command` run, when empty) inside the image `ref`."""
        image = await self.images.root(ref)
        if not language:
            return ResolvedLanguage(COMMAND_PROFILE, {}, [], image)
        profile = self.catalog.get(language)
        return await asyncio.to_thread(resolve_in_image, profile, image)

    @staticmethod
    def argv(lang: ResolvedLanguage, command: list[str]) -> list[str]:
        """What a `command` run executes: the image's Entrypoint, then the command or its Cmd."""
        assert lang.image is not None
        argv = [*lang.image.entrypoint, *(command or lang.image.cmd)]
        if not argv:
            raise InvalidRequest(
                f"image {lang.image.name} has no Entrypoint or Cmd; give `command` (an argv)",
                param="command",
            )
        return argv

    async def describe(self, name: str) -> tuple[bool, str]:
        """Whether a profile that names an image can run, and what it runs (or why not)."""
        profile = self.catalog.get(name)
        try:
            lang = await self.resolve(profile.image, name)
        except ApplianceError as exc:
            return False, exc.message
        tools = ", ".join(f"{t.name}={t.exe}" for t in lang.tools.values())
        return True, f"in image {profile.image}: {tools}"
