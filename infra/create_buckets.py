"""Creates the cluster's S3 buckets (the `buckets` one-shot service of docker-compose.yml).

    python create_buckets.py BUCKET [BUCKET …]

The endpoint and keys come from the environment as everywhere else (VAE_S3_ENDPOINT_URL,
AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION). A bucket that exists already is fine;
an S3 server still starting is waited for (bounded).
"""

from __future__ import annotations

import os
import sys

import boto3
from botocore.exceptions import BotoCoreError, ClientError
from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential


@retry(retry=retry_if_exception_type((BotoCoreError, ClientError)), wait=wait_exponential(max=5),
       stop=stop_after_delay(120), reraise=True)
def create(s3, bucket: str) -> None:
    try:
        s3.create_bucket(Bucket=bucket)
        print(f"bucket {bucket}: created", flush=True)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        print(f"bucket {bucket}: exists", flush=True)


def main(buckets: list[str]) -> int:
    if not buckets:
        print("usage: create_buckets.py BUCKET [BUCKET …]", file=sys.stderr)
        return 2
    s3 = boto3.client("s3", endpoint_url=os.environ["VAE_S3_ENDPOINT_URL"], region_name=os.environ.get("AWS_REGION", "us-east-1"))
    for bucket in buckets:
        create(s3, bucket)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
