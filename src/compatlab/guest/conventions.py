"""How the lab does routine things inside a guest of an image: where the payload medium is,
how it is mounted and unmounted, how a service is checked.

An image's ``guest:`` mapping sets any of these; the rest are the OS family's defaults
(:meth:`GuestConventions.default`). The templates name only their own fields, checked at load;
the scenario fills them in with values quoted for the guest's shell (:mod:`.quoting`).
"""

from __future__ import annotations

from dataclasses import dataclass

from compatlab._yaml import Node

__all__ = ["TEMPLATE_FIELDS", "GuestConventions", "parse_conventions"]

# The fields each guest template may name, filled in by the scenario (quoted for the shell).
TEMPLATE_FIELDS: dict[str, tuple[str, ...]] = {
    "mount_payload": ("label", "path"),
    "unmount_payload": ("path",),
    "service_check": ("service",),
}


@dataclass(frozen=True)
class GuestConventions:
    """How the lab does routine things inside a guest of this image.

    ``{label}``, ``{path}`` and ``{service}`` are filled in by the scenario. ``mount_payload`` is
    None where the guest mounts a CD-ROM by itself (Windows gives it a drive letter).
    """

    payload_path: str
    mount_payload: str | None
    unmount_payload: str | None
    service_check: str

    @classmethod
    def default(cls, os_family: str) -> GuestConventions:
        if os_family == "windows":
            # Golden Windows images are built with the payload drive at D:.
            return cls(
                payload_path="D:\\",
                mount_payload=None,
                unmount_payload=None,
                # The lab quotes {service} itself (compatlab.guest.quoting).
                service_check="sc query {service} | findstr /C:RUNNING",
            )
        return cls(
            payload_path="/run/compatlab/payload",
            mount_payload="mkdir -p {path} && mount -o ro -L {label} {path}",
            unmount_payload="umount {path}",
            service_check="systemctl is-active --quiet {service}",
        )


def parse_conventions(node: Node, os_family: str) -> GuestConventions:
    """An image's ``guest:`` mapping over the defaults of its ``os_family``."""
    defaults = GuestConventions.default(os_family)
    g = node.mapping(
        "guest", optional=("payload_path", "mount_payload", "unmount_payload", "service_check")
    )
    templates = {
        key: None if g[key].is_null() else g[key].template(key, fields)
        for key, fields in TEMPLATE_FIELDS.items()
        if key in g
    }
    if templates.get("service_check", "") is None:
        raise g["service_check"].error("service_check cannot be null")
    return GuestConventions(
        payload_path=g["payload_path"].text("payload_path")
        if "payload_path" in g
        else defaults.payload_path,
        mount_payload=templates.get("mount_payload", defaults.mount_payload),
        unmount_payload=templates.get("unmount_payload", defaults.unmount_payload),
        service_check=templates.get("service_check") or defaults.service_check,
    )
