"""GET /fair-share: each user's weight and shares (quotas.FairShare), as the dispatcher last
stored them (no Ray call here), smallest effective share — the next in line — first. Like the
jobs: a user sees their own row, an admin everyone's (policy.may_see)."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from vae_service.queue.auth import Identity
from vae_service.queue.models import utcnow
from vae_service.queue.routes.errors import STORE_DOWN, UNAUTHORIZED
from vae_service.queue.routes.schemas import FairShares
from vae_service.queue.routes.service import Service, identity, service

router = APIRouter(tags=["fair share"], responses={**UNAUTHORIZED, **STORE_DOWN})


@router.get("/fair-share", summary="Each user's weight and shares", operation_id="getFairShare",
            responses={200: {"model": FairShares}})
def fair_share(caller: Identity = Depends(identity), server: Service = Depends(service)):
    fair, now = server.fair_share, utcnow()
    held = {row.submitted_by: row for row in server.store.fair_share_usage()}
    users = []
    for user in sorted(held.keys() | fair.weights.keys()):
        if not server.policy.may_see(caller, user):
            continue
        row = held.get(user)
        current = row.current_share if row else 0.0
        # the stored usage brought up to now, as the next record will (the share held since then)
        usage = fair.decayed(row.usage_s, current, (now - row.updated_at).total_seconds()) if row else 0.0
        users.append({"user": user, "weight": fair.weight(user), "current_share": current,
                      "historic_share": fair.historic(usage), "effective_share": fair.effective(user, current, usage)})
    users.sort(key=lambda entry: (entry["effective_share"], entry["user"]))
    return {"half_life_s": fair.half_life_s, "users": users}
