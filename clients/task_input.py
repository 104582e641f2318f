"""A task's input from the SuperNode — and a message the SuperNode gave up while receiving it.

Flower 1.42's SuperNode handles one message at a time (``flwr/supernode/start_client_internal.py``):
it pulls a message from the SuperLink, creates its task, pulls the message's content, then waits
until *a* reply exists in its state and pushes the replies it has before it pulls the next
message. When the run stops while the content is being pulled (its ServerApp was killed in the
middle of sending a round) the SuperNode logs ``Run ID … is not in `RUNNING` status. Ignoring
message …`` and goes on — but the task stays pending and the message stays in its store with
content that never arrives. Handled like any other task, such an **abandoned message**

* holds the runtime in Flower's object pull (which retries for up to 7200 s), so the next run's
  messages wait behind it;
* then gets, when its task lease runs out, an error reply made by the SuperNode itself. After the
  next message arrives the SuperNode takes that stale reply for the one it waits for, pushes it
  (the SuperLink drops it: its run is over) and pulls again: the real reply to the next message
  stays unsent until yet another message comes. A resumed run whose ServerApp was killed this way
  lost a whole round to it (no reply from any node before the round time-out).

:func:`pull_task_input` keeps the task's lease alive (heartbeats) while it waits for missing
content, and meanwhile it asks the SuperNode for the next pending task. The SuperNode makes
a task only once the previous message was answered or given up, so a newer task proves that this
message was given up: the task is then finished as failed **without a reply** (for a ClientApp
task the SuperNode makes none either) and the newer task is run next (:class:`MessageAbandoned`).
So is a task whose content Flower's pull could not get at all (missing past its time limit, or
deleted by the SuperNode after its own pull failed): the SuperNode's pull of the same content
started first and has the same limit, so it is not waiting for a reply either. A message whose
content has not arrived after :data:`SLOW_INPUT_LOG_S` is named in the node's log.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from clients.node_runtime import NextTask, log

ABANDON_CHECK_S = 1.0  # while content is missing: ask for a newer task at most this often
SLOW_INPUT_LOG_S = 30.0  # content still missing after this long: one line in the node's log


class MessageAbandoned(Exception):
    """The SuperNode does not wait for a reply to this task's message (``why``); ``next_task``: the
    newer task that proves it, already acquired (None when Flower's pull gave up on the content)."""

    def __init__(self, run_id: int, waited_s: float, why: str, next_task: NextTask | None = None):
        super().__init__(why)
        self.run_id, self.waited_s, self.why, self.next_task = run_id, waited_s, why, next_task


class _WatchedClient:
    """A task's Runtime API client whose ``PullObject`` notices an abandoned message.

    Flower's ``pull_task_input`` pulls the message's objects in a thread pool and retries an
    object that is not there yet (after 20 ms in this runtime — :mod:`fedcredit.object_pulls` —
    doubling, at most 10 s apart); each such answer passes
    through :meth:`PullObject`, which then starts the task's heartbeats (content that is there
    takes milliseconds: no heartbeat needed), asks for a newer task (at most every
    :data:`ABANDON_CHECK_S`) and raises :class:`MessageAbandoned` once there is one. Every other
    call goes to the client.
    """

    def __init__(self, client, task_id: int, acquire_next: Callable[[], NextTask | None]):
        self._client = client
        self._task_id = task_id
        self._acquire_next = acquire_next
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.run_id = 0  # the message's run, known from its first object request
        self._checked = 0.0
        self._next: NextTask | None = None
        self._reported = False
        self._heartbeat = None

    def __getattr__(self, name: str):
        return getattr(self._client, name)

    def PullObject(self, request):  # noqa: N802 - the Runtime API's method name
        self.run_id = int(request.run_id)
        res = self._client.PullObject(request)
        if res.object_found and not res.object_available:
            self._content_missing()
        return res

    def _content_missing(self) -> None:
        from flwr.supercore.heartbeat import HeartbeatSender

        with self._lock:
            if self._heartbeat is None:
                self._heartbeat = HeartbeatSender(heartbeat_fn(self._client))
                self._heartbeat.start()
            now = time.monotonic()
            waited = now - self.started
            if self._next is None and now - self._checked >= ABANDON_CHECK_S:
                self._checked = now
                self._next = self._acquire_next()
            if self._next is not None:
                raise MessageAbandoned(self.run_id, waited, "its message never arrived in full and the SuperNode "
                                       f"has moved on to task {self._next[1]}", self._next)
            if waited >= SLOW_INPUT_LOG_S and not self._reported:
                self._reported = True
                log(f"run {self.run_id} task {self._task_id}: the message's content has not arrived after "
                    f"{waited:.0f} s; waiting for it (when the SuperNode logged 'Ignoring message' for it, its run "
                    "stopped while it was being received: it is given up without a reply as soon as the next "
                    "message arrives)")

    def stop_heartbeat(self) -> None:
        with self._lock:
            if self._heartbeat is not None and self._heartbeat.is_running:
                self._heartbeat.stop()


def heartbeat_fn(client):
    """Flower's task heartbeat, without its SIGINT to this process when the task is gone."""
    import httpx
    from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest  # pylint: disable=E0611

    def beat() -> bool:
        try:
            return bool(client.SendTaskHeartbeat(SendTaskHeartbeatRequest()).success)
        except httpx.HTTPError:
            return False

    return beat


def pull_task_input(client, task_id: int, acquire_next: Callable[[], NextTask | None]):
    """Flower's ``run_clientapp.pull_task_input`` (message, context, run, FAB), the task's lease kept
    alive while content is missing; raises :class:`MessageAbandoned` for a message no reply is
    awaited for."""
    from flwr.supercore.inflatable.inflatable_utils import ObjectPullError
    from flwr.supernode.runtime.run_clientapp import pull_task_input as flower_pull_task_input

    watched = _WatchedClient(client, task_id, acquire_next)
    try:
        return flower_pull_task_input(watched)
    except ObjectPullError as exc:
        raise MessageAbandoned(watched.run_id, time.monotonic() - watched.started,
                               f"its content could not be pulled ({exc})") from None
    finally:
        watched.stop_heartbeat()


def give_up(client, task_id: int, gone: MessageAbandoned) -> None:
    """Finish the task of an abandoned message as failed, with no reply (none is awaited); a task
    the SuperNode no longer knows needs nothing more."""
    import httpx
    from flwr.common.constant import SubStatus
    from flwr.proto.runtime_pb2 import PushTaskOutputRequest  # pylint: disable=E0611

    log(f"run {gone.run_id} task {task_id}: given up without a reply after {gone.waited_s:.0f} s: {gone.why} "
        "(Flower ignores a message whose run stopped while it was being received)")
    try:
        client.PushTaskOutput(PushTaskOutputRequest(sub_status=SubStatus.FAILED, details=f"given up: {gone.why}"[:500]))
    except httpx.HTTPError as exc:
        log(f"task {task_id}: could not be marked as given up ({exc})")
