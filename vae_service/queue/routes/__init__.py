"""The API's routes, one router per resource (queue/api.py includes them):

    jobs.py      POST /jobs, GET /jobs, GET /jobs/{id}, POST /jobs/{id}/cancel
    logs.py      GET /jobs/{id}/logs (Ray's output of the job, paged, tailed or followed)
    admin.py     POST /jobs/{id}/priority (admins only)
    fair_share.py GET /fair-share (each user's weight and shares)
    metrics.py   GET /metrics (Prometheus text)
    health.py    GET /healthz (no token)
    queue/ui.py  GET /ui (the web page; not in the OpenAPI document)

What they share comes from FastAPI dependencies (service.py: the caller's identity, the
server's parts) and the error bodies and their documentation from errors.py; schemas.py
describes the JSON bodies for the OpenAPI document.
"""
