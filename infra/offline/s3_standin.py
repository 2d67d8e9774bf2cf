"""The offline S3 stand-in (infra/compose.offline.yml): moto's S3 server, with its objects kept on
the service's volume so that they survive a restart of the stack, as SeaweedFS's do.

    python s3_standin.py DIR [--port 8333] [--sync-every 5]

moto holds everything in memory. This process runs moto's server and keeps a copy in DIR: put
back into the server at start, brought up to date every few seconds and once more at shutdown
(compose's SIGTERM). Only what changed is written (an object whose ETag is the same is left
alone), each file through a temporary name, so a copy is never half written. A SIGKILL loses at
most the last few seconds. The service reports healthy once the copy is back in the server.

Layout: DIR/<bucket>/<key, percent-encoded> (flat: keys such as `runs/` and `runs/a` cannot
clash); a bucket with no object is an empty directory. Object metadata (content type, user
metadata) is not kept: the stack's clients (MLflow, the runs) never read it back.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import threading
from pathlib import Path
from urllib.parse import quote, unquote

import boto3
from botocore.exceptions import ClientError
from moto.server import ThreadedMotoServer

READY = Path("/tmp/s3-standin-ready")  # the compose healthcheck looks for it


def client(port: int):
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                        aws_access_key_id="standin", aws_secret_access_key="standin")


def restore(s3, root: Path) -> dict[tuple[str, str], str]:
    """Puts every kept object back; returns their ETags."""
    etags = {}
    for bucket_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        s3.create_bucket(Bucket=bucket_dir.name)
        for path in bucket_dir.iterdir():
            if path.name.startswith(".tmp-"):
                path.unlink()  # cut off by a kill mid-write: the object's older copy is gone with it
                continue
            key = unquote(path.name)
            etags[bucket_dir.name, key] = s3.put_object(Bucket=bucket_dir.name, Key=key, Body=path.read_bytes())["ETag"]
    return etags


def sync(s3, root: Path, kept: dict[tuple[str, str], str]) -> None:
    """Brings DIR up to date with the server: new and changed objects written, deleted ones removed."""
    buckets = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    for stale in {p.name for p in root.iterdir() if p.is_dir()} - set(buckets):
        shutil.rmtree(root / stale)
    for bucket in buckets:
        bucket_dir = root / bucket
        bucket_dir.mkdir(exist_ok=True)
        listed = {(bucket, item["Key"]): item["ETag"]
                  for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
                  for item in page.get("Contents", [])}
        for (_, key), etag in listed.items():
            if kept.get((bucket, key)) == etag:
                continue
            try:
                body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except ClientError:
                continue  # deleted since the listing
            temporary = bucket_dir / f".tmp-{quote(key, safe='')}"
            temporary.write_bytes(body)
            os.replace(temporary, bucket_dir / quote(key, safe=""))
            kept[bucket, key] = etag
        for bucket_key in [k for k in kept if k[0] == bucket and k not in listed]:
            (bucket_dir / quote(bucket_key[1], safe="")).unlink(missing_ok=True)
            del kept[bucket_key]


def copy(s3, root: Path, kept: dict[tuple[str, str], str]) -> None:
    """sync(), where a failure is said and the server keeps serving (the next copy tries again)."""
    try:
        sync(s3, root, kept)
    except (OSError, ClientError) as exc:
        print(f"s3 stand-in: copying to {root} failed: {exc}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--port", type=int, default=8333)
    parser.add_argument("--sync-every", type=float, default=5.0, help="seconds between two copies")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)

    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    READY.unlink(missing_ok=True)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per request (the copies list every few seconds)
    server = ThreadedMotoServer(ip_address="0.0.0.0", port=args.port, verbose=False)
    server.start()
    s3 = client(args.port)
    kept = restore(s3, args.dir)
    print(f"s3 stand-in: {len(kept)} objects restored from {args.dir}", flush=True)
    READY.touch()
    while not stopping.wait(args.sync_every):
        copy(s3, args.dir, kept)
    copy(s3, args.dir, kept)
    print(f"s3 stand-in: {len(kept)} objects kept in {args.dir}", flush=True)
    READY.unlink(missing_ok=True)
    server.stop()


if __name__ == "__main__":
    main()
