"""Tenant administration over the API: who am I, keys, and registering gateways."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.requests import Request

from ironwatch.errors import InvalidInput
from ironwatch.web import body
from ironwatch.web.auth import ADMINS
from ironwatch.web.services import Services

router = APIRouter(prefix="/api/v1", tags=["admin"])


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


@router.get("/whoami")
async def whoami(request: Request) -> dict[str, Any]:
    """The tenant, role and scope of the calling key."""
    p = _services(request).auth.principal(request)
    return {
        "tenant": p.tenant,
        "role": p.role.value,
        "key_id": p.key_id,
        "site": p.site,
        "gateway": p.gateway,
    }


@router.get("/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    """Every key of the caller's tenant (never the secrets)."""
    services = _services(request)
    p = services.auth.require(request, *ADMINS)
    return {
        "keys": [
            {
                "id": k.id,
                "role": k.role.value,
                "site": k.site,
                "gateway": k.gateway,
                "label": k.label,
                "created_at": k.created_at.isoformat(),
                "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
            }
            for k in services.store.keys(p.tenant)
        ]
    }


@router.post("/keys", status_code=201)
async def create_key(request: Request) -> dict[str, Any]:
    """Create a key in the caller's tenant: ``{"role", "site"?, "gateway"?, "label"?}``.

    The secret is in this answer only; it is stored hashed.
    """
    services = _services(request)
    p = services.auth.require(request, *ADMINS)
    doc = await body.read_json(request, 64 * 1024)
    for name in ("role", "site", "gateway", "label"):
        if doc.get(name) is not None and not isinstance(doc[name], str):
            raise InvalidInput(name, "expected a string")
    if not doc.get("role"):
        raise InvalidInput("role", "missing")
    key, secret = services.store.create_key(
        p.tenant, doc["role"], site=doc.get("site"), gateway=doc.get("gateway"), label=doc.get("label")
    )
    return {"id": key.id, "role": key.role.value, "key": secret}


@router.delete("/keys/{key_id}")
async def revoke_key(request: Request, key_id: str) -> dict[str, Any]:
    """Revoke a key of the caller's tenant; it is refused from then on."""
    services = _services(request)
    p = services.auth.require(request, *ADMINS)
    key = services.store.revoke_key(key_id, tenant=p.tenant)
    services.auth.forget(key.id)
    return {"id": key.id, "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None}


@router.post("/gateways", status_code=201)
async def add_gateway(request: Request) -> dict[str, Any]:
    """Register a gateway to a site: ``{"gateway", "site"}``."""
    services = _services(request)
    p = services.auth.require(request, *ADMINS)
    doc = await body.read_json(request, 64 * 1024)
    g = services.store.add_gateway(p.tenant, doc.get("gateway"), doc.get("site"))  # type: ignore[arg-type]
    return {"gateway": g.gateway, "site": g.site}
