"""A queued job's stand-in for the multi-node queue tests: it holds the job's bundles on the Ray
cluster, as its training would, and trains nothing (no CUDA needed).

The tests' nodes declare logical GPUs (`ray start --num-gpus 2`) that Ray counts and schedules but
that have no device behind them; a training with `resources.use_gpu: true` would put its model on
`cuda:0` and fail on this CPU-only torch. So where a test needs GPU jobs, the server runs this
program instead of `python -m vae_service.queue.entry`: VAE_JOB_PYTHON (the server's setting for
the Python that runs jobs on the cluster) names a wrapper that execs it, and the `-m …` arguments
are ignored. Everything else is real: the queue admits, places and preempts the job from its
spec, Ray runs it as a Ray job, and this driver asks Ray for one placement group of the spec's
bundles (resources.num_workers × CPUs + GPUs per worker, packed or spread: what Ray Train's worker
group asks for), so Ray really places it on the nodes and the queue reads where it is.

It holds them until the job is stopped (SIGTERM: a cancel or a preemption; it then ends with 130,
as an interrupted job does), or HOLD_S at most, then ends with 0.
"""

from __future__ import annotations

import os
import signal
import sys
import time

HOLD_S = 900.0  # a test that forgets its job does not leave it holding the cluster for ever


def main() -> int:
    from vae_service.core.resources import requested_bundles
    from vae_service.core.spec_loading import load_spec_text

    job = load_spec_text(os.environ["VAE_JOB_SPEC"], "VAE_JOB_SPEC")
    bundles = requested_bundles(job)
    each = {name: value for name, value in bundles.each.items() if value > 0}

    stopped = []
    signal.signal(signal.SIGTERM, lambda *_: stopped.append(True))

    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    ray.init(logging_level="ERROR")
    group = placement_group([dict(each) for _ in range(bundles.count)], strategy=bundles.strategy)
    ray.get(group.ready())
    print(f"holding {bundles.describe()} for job {os.environ.get('VAE_JOB_ID')} (no training: tests/bundle_holder.py)",
          flush=True)
    deadline = time.monotonic() + HOLD_S
    while not stopped and time.monotonic() < deadline:
        time.sleep(0.2)
    remove_placement_group(group)
    print("stopped" if stopped else "held long enough", flush=True)
    return 130 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
