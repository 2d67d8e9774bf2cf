"""The job queue service: a store of jobs (SQLAlchemy), a dispatcher that runs them on a Ray
cluster through the Ray Jobs API, and an HTTP API (FastAPI) in front of both.

This package is the only place that knows the database and the Ray Jobs API. One module per
noun: settings, db, models, states, store, scheduling, leader, ray_jobs, job_env, entry,
dispatcher, auth, metrics, api, client.
"""
