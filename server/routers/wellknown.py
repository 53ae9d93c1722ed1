"""`/.well-known/jwks.json`: the public key of the webhook signatures (server/signing.py), open to anyone."""

from __future__ import annotations

from fastapi import APIRouter

from seedvr_local.server.state import StateDep

router = APIRouter(tags=["webhooks"])


@router.get("/.well-known/jwks.json")
async def jwks(state: StateDep) -> dict:
    return state.signer.jwks()
