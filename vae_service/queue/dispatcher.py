"""The dispatcher: moves jobs from the store onto Ray and copies what happens back.

One loop, one thread, one active dispatcher per store (see leader.py); every step is safe to
repeat, so a dispatcher killed at any point and started again finishes the work instead of
doing it twice:

  requeue  jobs preempted during the last tick go back to `queued`
  admit    the front of the queue (Store.queue_tiers: each user's first jobs at each priority,
           a priority at a time, highest first; each tier handed to Ray before the next is
           read), in the order scheduling.py gives (priority, fair share, quotas); jobs whose workers
           can be placed on the nodes now (where Ray says the admitted jobs are) are committed as
           `submitted` first, then handed to Ray with submission id = the job id (its first
           attempt) or `<job id>-<n>` (the attempt after its n-th preemption); running jobs
           the plan preempts become `preempting` and are stopped on Ray (SIGTERM to the
           driver: it checkpoints and ends; Ray kills it after VAE_PREEMPT_GRACE_S).
  follow   every admitted job is compared with what Ray reports:
             Ray has no record, store says submitted → submit (we died before Ray got it)
             Ray has no record, store says running   → failed ("lost": the head restarted)
             Ray has no record, store says cancelling → cancelled (it never ran)
             PENDING / RUNNING                       → submitted / running
             Ray has no record, store says preempting → preempted (resumed when admitted)
             cancelling/preempting, not ended on Ray → stop_job (again, harmlessly)
             SUCCEEDED / FAILED / STOPPED            → succeeded / failed / cancelled, as the
                                                       job's outcome.json says (its MLflow run,
                                                       its error's kind and message); Ray's own
                                                       status when the job wrote none (killed)
             preempting, then ended                  → preempted: stopped by the signal, or
                                                       killed after the grace period (both
                                                       resume from the latest checkpoint);
                                                       succeeded / failed if it got there first
  unplaced (with follow, every UNPLACED_CHECK_S) a running job whose workers Ray has not
           placed for UNPLACED_AFTER_S — its placement group pending, as after a worker node
           is lost — gets a waiting reason that says so, cleared once Ray places them.
  usage    (every USAGE_RECORD_S) each user's dominant share of what the admitted jobs hold is
           added to their decayed usage in the store (Store.record_usage: a row per user, not
           per job); `admit` orders the queue by it (quotas.FairShare), from memory in between.
  reconcile (at start-up, then follow) a job Ray knows but the store still calls queued
           (someone reset the row) is adopted as submitted, never submitted again.

The API wakes the loop (`wake`) when a job arrives or is cancelled; otherwise it polls.

A tick is bounded, so the dispatcher never holds its leadership lock while stuck on Ray: every
Ray call has its timeouts (ray_jobs.py), `follow` lists Ray's jobs once per tick instead of
asking after each job, the spec text is read only for a job being submitted or finished, and no
new Ray call starts once a tick has run for half the leadership timeout. The leadership timeout
is 3 × the Ray timeout (30 s by default). The dispatcher gives up its lock, and stands by
for YIELD_S so that a standby can take it, when one tick took longer than that, or when Ray has
not answered for that long: a standby whose way to Ray works then dispatches; alone, this one
takes the lock back and retries.

A cancel that lands between `submitted` and the hand-off to Ray: `_submit` reads the state
again just before calling Ray, so a job cancelled by then never reaches Ray (cancelled at
once); one cancelled during the call is stopped right after it, not a tick later.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from typing import Optional

from vae_service import storage
from vae_service.core.errors import one_line
from vae_service.core.spec_loading import SpecError, load_spec_text
from vae_service.jobs.locations import queued_run_dir
from vae_service.jobs.outcome import INTERRUPTED, OUTCOME_FILE, SUCCEEDED, Outcome, read_outcome
from vae_service.queue import scheduling
from vae_service.queue.job_env import job_env
from vae_service.queue.leader import Leadership
from vae_service.queue.models import Job
from vae_service.queue.ray_jobs import RayJob, RayJobs, RayRejected, RayUnavailable
from vae_service.queue.scheduling import Rules
from vae_service.queue.settings import PREEMPT_GRACE_S
from vae_service.queue.states import ACTIVE, IllegalTransition, State
from vae_service.queue.store import Store, UnknownJob

log = logging.getLogger("vae_service.queue.dispatcher")

UNPLACED_CHECK_S = 5.0  # how often running jobs are checked for workers Ray has not placed
UNPLACED_AFTER_S = 10.0  # Ray places a worker group within seconds when there is room

USAGE_RECORD_S = 5.0  # how often fair share's history is brought up to date (a week's half-life: plenty)

POLL_S = 0.5  # between ticks when nothing wakes the loop
LEADER_CHECK_S = 5.0
LEADER_TIMEOUT_RAY_CALLS = 3  # the leadership timeout, in Ray timeouts
YIELD_S = 2.0  # after giving up the lock: long enough for a standby (they poll every 0.05-0.5 s)
OUTCOME = {"SUCCEEDED": State.SUCCEEDED, "FAILED": State.FAILED, "STOPPED": State.CANCELLED}
STOPPING = (State.CANCELLING, State.PREEMPTING)  # asked to stop on Ray


class Dispatcher:
    def __init__(self, store: Store, ray: RayJobs, *, python: Optional[str] = None, poll_s: float = POLL_S,
                 wake: Optional[threading.Event] = None, leader_timeout_s: Optional[float] = None,
                 rules: Rules = Rules(), grace_s: int = PREEMPT_GRACE_S):
        self.store = store
        self.ray = ray
        self.python = python
        self.rules = rules  # quotas and the preemption thrash guard
        self.grace_s = grace_s  # how long a stopped job has to checkpoint and end
        self.poll_s = poll_s
        self.wake = wake or threading.Event()
        self.leader_timeout_s = leader_timeout_s or LEADER_TIMEOUT_RAY_CALLS * ray.timeout_s
        self._stop_sent: set[str] = set()
        self._reserved_for: Optional[str] = None
        self._known: dict[str, RayJob] = {}  # what Ray said of the admitted jobs at the last follow
        self._waiting: dict[str, str] = {}  # job id → the waiting reason last stored for it
        self._unplaced_since: dict[str, float] = {}  # running job id → when its workers were first seen unplaced
        self._unplaced_stored: Optional[dict[str, str]] = None  # the reasons last stored (None: not yet this process)
        self._unplaced_checked = 0.0
        self._last_error = ""
        self._tick_deadline = float("inf")  # no new Ray call starts after it
        self._history: dict[str, float] = {}  # user → decayed usage (share-seconds), as last stored
        self._usage_recorded = -float("inf")

    # ---- the loop ----------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event, leadership: Leadership) -> None:
        """Waits to become the only dispatcher, reconciles, then ticks until `stop` is set."""
        while not stop.is_set():
            log.info("dispatcher: waiting for the %s", leadership.describe())
            while not stop.is_set() and not leadership.acquire(timeout=1.0):
                pass
            if stop.is_set():
                break
            log.info("dispatcher: active (%s held)", leadership.describe())
            try:
                gave_up = self._lead(stop, leadership)
            finally:
                leadership.release()
            if gave_up:
                stop.wait(YIELD_S)

    def _lead(self, stop: threading.Event, leadership: Leadership) -> bool:
        """Ticks while this process leads; True when it gives up the lead (see the docstring)."""
        reconciled = False
        self._usage_recorded = -float("inf")  # another leader may have written the history meanwhile
        last_check = time.monotonic()
        ray_down_since: Optional[float] = None
        while not stop.is_set():
            self.wake.clear()  # before the tick: a wake-up that arrives during it is kept
            started = time.monotonic()
            self._tick_deadline = started + self.leader_timeout_s / 2
            try:
                if not reconciled:
                    self.reconcile()
                    reconciled = True
                self.tick()
                self._last_error = ""
                ray_down_since = None
            except (RayUnavailable, OSError) as exc:
                ray_down_since = ray_down_since or started
                self._note(f"dispatcher: {exc}; retrying")
            except Exception as exc:  # a database hiccup must not kill the loop
                self._note(f"dispatcher: {exc.__class__.__name__}: {one_line(exc, 300)}; retrying")
            finally:
                self._tick_deadline = float("inf")
            took = time.monotonic() - started
            if took > self.leader_timeout_s or (ray_down_since and time.monotonic() - ray_down_since > self.leader_timeout_s):
                why = f"a tick took {took:.1f} s" if took > self.leader_timeout_s else "Ray has not answered"
                log.warning("dispatcher: %s (leadership timeout %g s); giving up the %s for %g s",
                            why, self.leader_timeout_s, leadership.describe(), YIELD_S)
                self._last_error = ""
                return True
            if time.monotonic() - last_check > LEADER_CHECK_S:
                last_check = time.monotonic()
                if not leadership.alive():
                    log.warning("dispatcher: lost the %s; standing by", leadership.describe())
                    return False
            self.wake.wait(self.poll_s)
        return False

    def _note(self, message: str) -> None:
        if message != self._last_error:  # once per distinct problem, not every tick
            log.warning(message)
            self._last_error = message

    def tick(self) -> None:
        # Admit first: a new job waits for no Ray round trips; admit again when a job that
        # held resources has just finished. Jobs preempted last tick rejoin the queue first.
        self.requeue_preempted()
        if time.monotonic() - self._usage_recorded >= USAGE_RECORD_S:
            self.record_usage()
        self.admit()
        if self.follow():
            self.admit()

    # ---- reconcile, follow, admit ------------------------------------------------------------

    def reconcile(self) -> None:
        known = self.ray.list()
        # Only the queued jobs Ray has a submission of (`<id>` or `<id>-<n>`), not the whole queue
        for job in self.store.in_states([State.QUEUED], ids={ray_id.split("-")[0] for ray_id in known}):
            if submission_id(job) in known:
                log.warning("dispatcher: job %s is queued in the store but Ray has it: adopting it", job.id)
                self._transition(job.id, State.SUBMITTED, only_from=[State.QUEUED], ray_submission_id=submission_id(job),
                                 attempts=max(job.attempts, 1))
        admitted = len(self.store.in_states(ACTIVE))
        log.info("dispatcher: reconciled with Ray (%d job(s) admitted, %d known to Ray)", admitted, len(known))
        self.follow(known)

    def follow(self, known: Optional[dict[str, RayJob]] = None) -> bool:
        """Brings every admitted job up to date with Ray (one list call, whatever their
        number); True when one of them ended."""
        active = self.store.in_states(ACTIVE)
        if not active:
            return False
        known = self.ray.list() if known is None else known
        self._known = known
        ended = False
        for job in active:
            if self._out_of_time():
                break  # the rest next tick
            ended |= self._follow_one(job, known.get(job.ray_job_id))
        if time.monotonic() - self._unplaced_checked >= UNPLACED_CHECK_S and not self._out_of_time():
            self._unplaced_checked = time.monotonic()
            self.note_unplaced([job for job in active if job.state == State.RUNNING.value], known)
        return ended

    def note_unplaced(self, running: list[Job], known: dict[str, RayJob]) -> None:
        """A running job that Ray cannot place (its workers' placement group pending: a worker
        node was lost, or its room is held outside the queue) waits in Ray with no error of its
        own; its waiting reason says so, with the live nodes, until Ray places it."""
        groups = self.ray.unplaced() if running else {}
        now, reasons, nodes = time.monotonic(), {}, None
        for job in running:
            info = known.get(job.ray_job_id)
            waiting = groups.get(info.ray_job_id) if info is not None and info.ray_job_id else None
            if not waiting:
                self._unplaced_since.pop(job.id, None)
                continue
            if now - self._unplaced_since.setdefault(job.id, now) >= UNPLACED_AFTER_S:
                nodes = self.ray.nodes() if nodes is None else nodes
                reasons[job.id] = scheduling.unplaced_in_ray([b for g in waiting for b in g.bundles],
                                                             waiting[0].scheduling_state, nodes)
        stored = self._unplaced_stored
        changed = {job.id: reasons.get(job.id) for job in running
                   if stored is None or stored.get(job.id) != reasons.get(job.id)}
        if changed:
            self.store.set_waiting_reasons(changed, State.RUNNING)
        self._unplaced_stored = reasons

    def _out_of_time(self) -> bool:
        return time.monotonic() > self._tick_deadline

    def _follow_one(self, job: Job, info: Optional[RayJob]) -> bool:
        state = State(job.state)
        if info is None:
            if state is State.SUBMITTED:
                self._submit(job.id)
                return False
            if state is State.CANCELLING:
                self._transition(job.id, State.CANCELLED, only_from=[State.CANCELLING])
            elif state is State.PREEMPTING:
                self._transition(job.id, State.PREEMPTED, only_from=[State.PREEMPTING])
            else:
                self._transition(job.id, State.FAILED, only_from=[state],
                                 error="lost: Ray has no record of this job (was the Ray head restarted?)")
            return True
        if info.status in OUTCOME:
            self._finish(job, info)
            return True
        if state in STOPPING:
            self._stop(job)
        elif info.status == "RUNNING" and state is State.SUBMITTED:
            self._transition(job.id, State.RUNNING, only_from=[State.SUBMITTED])
        return False

    def record_usage(self) -> None:
        """Adds what each user's admitted jobs hold now to their fair-share history."""
        active = self.store.in_states(ACTIVE)
        totals = self.ray.cluster().totals() if active else {}
        shares = {user: usage.share(totals) for user, usage in scheduling.usage_by_user(active).items()}
        self._history = self.store.record_usage(shares, self.rules.fair_share)
        self._usage_recorded = time.monotonic()

    def requeue_preempted(self) -> None:
        """Preempted jobs go back in line, to resume from their checkpoints when admitted."""
        for job in self.store.in_states([State.PREEMPTED]):
            self._transition(job.id, State.QUEUED, only_from=[State.PREEMPTED])

    def admit(self) -> None:
        """The front of the queue (not every queued row: a tick's cost does not grow with the
        queue), a priority tier at a time: each tier's chosen jobs are handed to Ray before the
        next tier is read and planned, so an urgent job waits for nothing ranked below it."""
        tiers = self.store.queue_tiers()
        top = next(tiers, None)
        if top is None:
            self._reserved_for = None
            self._waiting = {}
            return
        cluster, active = self.ray.cluster(), self.store.in_states(ACTIVE)
        planner = scheduling.Planner(cluster, active, self.rules, placed=self._placed(cluster, active),
                                     history=self._history)
        considered, reasons = [], {}
        for tier in itertools.chain([top], tiers):
            step = planner.consider(tier)
            for victim in step.preempt:
                self._preempt(victim, step.reserved_for)
            self._hand_to_ray(step.chosen)
            considered += tier
            reasons |= step.reasons
        self._store_waiting_reasons(considered, reasons)
        reserved = planner.reserved_for
        reserved_id = reserved.id if reserved is not None else None
        if reserved_id and reserved_id != self._reserved_for:
            log.info("dispatcher: job %s (asks %s) waits for room; jobs ranked after it wait behind it",
                     reserved_id, reserved.resource_request)
        self._reserved_for = reserved_id

    def _hand_to_ray(self, chosen: list[Job]) -> None:
        """Commits each chosen job as `submitted`, then submits it to Ray."""
        for job in chosen:
            if self._out_of_time():
                break  # still queued: admitted next tick
            try:
                self.store.transition(job.id, State.SUBMITTED, only_from=[State.QUEUED],
                                      ray_submission_id=submission_id(job))
            except (IllegalTransition, UnknownJob):
                continue  # cancelled meanwhile
            self._submit(job.id)

    def _placed(self, cluster, active: list[Job]) -> dict[str, list[str]]:
        """Where Ray has placed the admitted jobs' workers, by queue job id (node ids). Needed
        only on a cluster of several nodes; a job Ray has not placed yet is left out (the plan
        counts it where it would go)."""
        if len(cluster.nodes) < 2 or not active:
            return {}
        by_ray_id = self.ray.placements()
        out = {}
        for job in active:
            info = self._known.get(job.ray_job_id)
            if info is not None and info.ray_job_id in by_ray_id:
                out[job.id] = by_ray_id[info.ray_job_id]
        return out

    def _store_waiting_reasons(self, queued: list[Job], reasons: dict[str, str]) -> None:
        """Stores why each job at the front of the queue waits (none: it is admitted now), only
        where that changed since this dispatcher last stored it: not a write every tick. A job
        pushed back out of the front has its reason cleared; the API then says how many jobs
        are ranked ahead of it."""
        head = {job.id for job in queued}
        changed = {job.id: reasons.get(job.id) for job in queued if self._waiting.get(job.id) != reasons.get(job.id)}
        changed |= {job_id: None for job_id in self._waiting if job_id not in head}
        if changed:
            self.store.set_waiting_reasons(changed)
        self._waiting = {job_id: reason for job_id, reason in reasons.items() if job_id in head}

    # ---- steps -------------------------------------------------------------------------------

    def _submit(self, job_id: str) -> None:
        """Hands a `submitted` job to Ray. Safe to repeat: Ray keeps one job per submission id."""
        job = self.store.get(job_id)  # its spec, and its state as of now: a cancel may have landed
        if State(job.state) is State.CANCELLING:  # Ray never saw it: nothing to stop
            self._transition(job.id, State.CANCELLED, only_from=[State.CANCELLING])
            return
        if State(job.state) is not State.SUBMITTED:
            return
        self.store.update(job.id, attempts=job.attempts + 1)
        env = job_env(job.id, job.spec_normalised, job.run_dir, resume=job.preemptions > 0, grace_s=self.grace_s)
        try:
            created = self.ray.submit(job.ray_job_id, env, self.python)
        except RayRejected as exc:
            self._transition(job.id, State.FAILED, only_from=ACTIVE, error=f"Ray refused the job: {exc}")
            return
        log.info("dispatcher: job %s %s Ray (priority %d%s)", job.id, "submitted to" if created else "already on",
                 job.priority, f", resuming after {job.preemptions} preemption(s)" if job.preemptions else "")
        if State(self.store.get(job.id).state) is State.CANCELLING:  # cancelled during the call: stop it now
            self._stop(job)

    def _preempt(self, victim: Job, reserved: Job) -> None:
        """Asks a running job to make room for `reserved` (the plan chose it)."""
        try:
            self.store.transition(victim.id, State.PREEMPTING, only_from=[State.RUNNING])
        except (IllegalTransition, UnknownJob):
            return  # it ended or was cancelled meanwhile: the next plan sees the room
        log.info("dispatcher: preempting job %s (priority %d) for job %s (priority %d)",
                 victim.id, victim.priority, reserved.id, reserved.priority)
        self._stop(victim)

    def _stop(self, job: Job) -> None:
        """Asks Ray to stop the job's current attempt (once per attempt; repeating is harmless)."""
        attempt = job.ray_job_id
        if attempt not in self._stop_sent:
            log.info("dispatcher: stopping job %s on Ray", job.id)
            self.ray.stop(attempt)
            self._stop_sent.add(attempt)

    def _finish(self, job: Job, info: RayJob) -> None:
        """Records how the job ended: from the outcome.json it wrote beside its run, or, when it
        wrote none (its driver was killed, or its storage was unwritable), from Ray's status.
        A job being preempted that did not get to succeed or fail on its own is `preempted`."""
        job = self.store.get(job.id)  # with its spec: where its outcome is
        outcome = read_job_outcome(job)
        new = OUTCOME[info.status]
        if outcome is not None and new is not State.CANCELLED:
            new = State.SUCCEEDED if outcome.state == SUCCEEDED else State.FAILED
        if State(job.state) is State.PREEMPTING and (outcome is None or outcome.state == INTERRUPTED):
            new = State.PREEMPTED
        fields = {"mlflow_run_id": (outcome.mlflow_run_id if outcome else None) or mlflow_run_id_for(job.id)}
        if outcome is not None and outcome.nodes:
            fields["nodes"] = json.dumps(outcome.nodes)
        if new is State.FAILED:
            fields["error"] = str(outcome.error) if outcome and outcome.error else missing_outcome_error(job, info)
        elif new is State.CANCELLED and State(job.state) is not State.CANCELLING:
            fields["error"] = "stopped on Ray (not through the queue)"
        self._transition(job.id, new, only_from=ACTIVE, **fields)
        self._stop_sent.discard(job.ray_job_id)
        log.info("dispatcher: job %s %s", job.id, new)

    def _transition(self, job_id: str, new: State, **kwargs) -> None:
        try:
            self.store.transition(job_id, new, **kwargs)
        except IllegalTransition as exc:  # someone (the API) moved it first: fine, next tick sees it
            log.info("dispatcher: %s", exc)


def submission_id(job: Job) -> str:
    """The Ray submission id of the job's next attempt: its id, then `<id>-<n>` after the n-th
    preemption (Ray keeps one job per submission id, so each attempt needs its own)."""
    return job.id if not job.preemptions else f"{job.id}-{job.preemptions}"


def outcome_location(job: Job) -> Optional[storage.Location]:
    """Where the job's outcome.json is: in the run directory stored with it (a job stored before
    run directories were: where its spec put it)."""
    try:
        run_dir = storage.resolve(job.run_dir) if job.run_dir else queued_run_dir(load_spec_text(job.spec_normalised, f"job {job.id}"), job.id)
        return run_dir.join(OUTCOME_FILE)
    except (SpecError, storage.StorageError, ValueError):
        return None


def read_job_outcome(job: Job) -> Optional[Outcome]:
    """The Outcome the job wrote, or None when there is none (or it cannot be read)."""
    location = outcome_location(job)
    if location is None:
        return None
    try:
        return read_outcome(location.parent)
    except (storage.StorageError, OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("dispatcher: outcome of %s at %s: %s", job.id, location.uri, one_line(exc, 300))
        return None


def mlflow_run_id_for(job_id: str) -> Optional[str]:
    """The MLflow run tagged vae.job_id = job_id (for a job that wrote no outcome)."""
    try:
        from vae_service.tracking.mlflow_run import run_of_job

        return run_of_job(job_id)
    except Exception as exc:  # tracking down: the outcome still counts, without the run id
        log.warning("dispatcher: MLflow lookup for %s failed: %s", job_id, exc.__class__.__name__)
        return None


def missing_outcome_error(job: Job, info: RayJob) -> str:
    """The error of a failed job that left no outcome: its exit code, and where it was due."""
    code = f"exit code {info.exit_code}: " if info.exit_code not in (None, 0) else ""
    location = outcome_location(job)
    where = f" at {location.uri}" if location is not None else ""
    return (f"{code}the job ended without writing its outcome{where} (killed, or its storage is not writable "
            f"from the cluster); see `vae logs {job.id}`")
