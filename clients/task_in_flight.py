"""The task the node's runtime is working on, kept where a restarted runtime finds it.

Flower 1.42's SuperNode sends one reply at a time (``flwr/supernode/start_client_internal.py``,
``_push_messages``): as soon as a reply is registered on its Runtime API (``PushMessages``) it
sends the reply's metadata to the SuperLink and then waits, **with no time limit**
(``while object_store.get(id) == b"": time.sleep(0.5)``), until every object of the reply has been
pushed (``PushObject``). A runtime killed (SIGKILL, OOM) between registering a reply and pushing its
last object left the SuperNode waiting for good: the node pulled no further message, yet kept its
heartbeat to the SuperLink, so every later round sampled it and waited its time-out for it.
Flower's own remedy does not reach this case: when a task's lease runs out (60 s after its last
heartbeat) the SuperNode makes an error reply only for a message that has *no* reply yet.

So the runtime keeps its task in flight in a private directory (next to the SuperExec secret:
0700, removed when ``node start`` stops):

* ``task.json`` — when a task is taken: its token and id; once pulled, the message it answers
  (metadata only, no content);
* ``reply.json`` — when a reply exists, before anything of it is pushed: the reply exactly as it
  is pushed (the ``PushMessages`` request and every object's bytes), the node's context and the
  task's final status. The worker writes it after the ClientApp returned, i.e. after the node
  recorded the release's privacy spend in its lifetime ledger (``clients.node``);
* ``registered`` — once ``PushMessages`` returned (the SuperNode holds the reply).

Files are replaced by an atomic rename, not fsync-ed: they only have to outlive the runtime
process, not the machine (the SuperNode's own state is in memory and dies with a power cut).

:func:`finish_task` completes a task whose worker or runtime died, with the same token:

* a reply was kept → it is pushed again unless the SuperNode is done with it. Pushing is
  idempotent on Flower's side (``PushMessages`` of a stored message id registers nothing new and
  returns only the objects still missing), so the SuperNode gets exactly the reply the node
  accounted for — one release, one ledger event, never a second reply. It is *not* pushed again
  when it was registered and the SuperNode no longer holds it (sent, then deleted): that would
  leave a stale reply that the SuperNode sends in place of the next message's (see
  :mod:`clients.task_input`); nor when the SuperNode holds all of it (it is sending it);
* no reply was kept → the fixed error reply, as for a worker that died (nothing was released);
* then the task's outcome (``PushTaskOutput``) with the kept context.

:func:`finish_interrupted_task` runs when a restarted runtime starts, before it warms up. The old
token still works while the task's lease lasts (at least ~37 s after the kill: Flower's heartbeat
comes every ~20 s and a lease lasts 60 s; ``node start`` restarts the runtime after 1 s); a task
whose lease ended was finished by the SuperNode itself, which is logged.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from clients.node_runtime import RuntimeSettings, log, task_client

TASK_FILE, REPLY_FILE, REGISTERED_FILE = "task.json", "reply.json", "registered"
_process_dir: Path | None = None  # a runtime without a private directory: the temporary one it made
_process_dir_owner: int | None = None  # (the pid that made it; a forked worker does not remove it)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _replace(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a killed process leaves the old file or the new one."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


@dataclass
class KeptReply:
    """A reply as the runtime pushes it: the ``PushMessages`` request (the message without content
    and its object tree), each object's bytes, and what ``PushTaskOutput`` then sends."""

    request: bytes
    objects: dict[str, bytes]
    context: bytes
    run_id: int
    node_id: int
    status: str
    details: str

    @classmethod
    def of(cls, reply, context, status: str, details: str) -> "KeptReply":
        """Serialise ``reply`` as Flower's ``run_clientapp.push_message`` pushes it (``context``: the
        node's context after the task, None to leave the SuperNode's as it is)."""
        from flwr.app.message import remove_content_from_message
        from flwr.common.serde import context_to_proto, message_to_proto
        from flwr.proto.runtime_pb2 import PushAppMessagesRequest  # pylint: disable=E0611
        from flwr.supercore.inflatable.inflatable_object import (get_all_nested_objects, get_object_tree,
                                                                  no_object_id_recompute)

        reply.metadata.__dict__["_message_id"] = reply.object_id
        proto = message_to_proto(remove_content_from_message(reply))
        with no_object_id_recompute():
            tree = get_object_tree(reply)
            objects = {oid: obj.deflate() for oid, obj in get_all_nested_objects(reply).items()}
        request = PushAppMessagesRequest(messages_list=[proto], message_object_trees=[tree])
        return cls(request.SerializeToString(), objects,
                   context_to_proto(context).SerializeToString() if context is not None else b"",
                   int(reply.metadata.run_id), int(reply.metadata.src_node_id), status, details)

    def context_after(self):
        """The context to push with the task's outcome (None: none was kept)."""
        from flwr.common.serde import context_from_proto
        from flwr.proto.message_pb2 import Context as ProtoContext  # pylint: disable=E0611

        return context_from_proto(ProtoContext.FromString(self.context)) if self.context else None

    @property
    def message_id(self) -> str:
        from flwr.proto.runtime_pb2 import PushAppMessagesRequest  # pylint: disable=E0611

        return PushAppMessagesRequest.FromString(self.request).message_object_trees[0].object_id

    def to_json(self) -> bytes:
        return json.dumps({"request": _b64(self.request), "objects": {k: _b64(v) for k, v in self.objects.items()},
                           "context": _b64(self.context), "run_id": self.run_id, "node_id": self.node_id,
                           "status": self.status, "details": self.details}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "KeptReply":
        d = json.loads(data)
        return cls(base64.b64decode(d["request"]), {k: base64.b64decode(v) for k, v in d["objects"].items()},
                   base64.b64decode(d["context"]), d["run_id"], d["node_id"], d["status"], d["details"])


@dataclass
class InterruptedTask:
    """What a task in flight left behind."""

    token: str
    task_id: int
    message: bytes | None  # the message answered (proto, without content), once pulled
    reply: KeptReply | None
    registered: bool


def remove_process_dir() -> None:
    """Remove the temporary directory :meth:`TaskInFlight.of` made for a runtime without a private
    directory (at exit, and on SIGTERM) — only in the process that made it, not in a forked worker."""
    if _process_dir is not None and os.getpid() == _process_dir_owner:
        shutil.rmtree(_process_dir, ignore_errors=True)


class TaskInFlight:
    """The files of the one task the runtime works on (see the module docstring)."""

    def __init__(self, directory: Path):
        self.directory = directory

    @classmethod
    def of(cls, s: RuntimeSettings) -> "TaskInFlight":
        """In the runtime's private directory; a runtime without one (tests) gets a temporary
        directory for this process, removed when the process exits."""
        global _process_dir, _process_dir_owner
        if s.work_dir is not None:
            return cls(Path(s.work_dir) / "task-in-flight")
        if _process_dir is None:
            _process_dir, _process_dir_owner = Path(tempfile.mkdtemp(prefix="fedcredit-runtime-")), os.getpid()
            atexit.register(remove_process_dir)
        return cls(_process_dir)

    def taken(self, token: str, task_id: int) -> None:
        self.clear()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._write_task({"token": token, "task_id": task_id})

    def received(self, message) -> None:
        """The task's message (its metadata: what an error reply needs)."""
        from flwr.app.message import remove_content_from_message
        from flwr.common.serde import message_to_proto

        task = json.loads((self.directory / TASK_FILE).read_bytes())
        task["message"] = _b64(message_to_proto(remove_content_from_message(message)).SerializeToString())
        self._write_task(task)

    def keep_reply(self, reply: KeptReply) -> None:
        _replace(self.directory / REPLY_FILE, reply.to_json())

    def mark_registered(self) -> None:
        _replace(self.directory / REGISTERED_FILE, b"")

    def load(self) -> InterruptedTask | None:
        try:
            task = json.loads((self.directory / TASK_FILE).read_bytes())
        except (OSError, ValueError):
            return None
        reply_file = self.directory / REPLY_FILE
        return InterruptedTask(task["token"], int(task["task_id"]),
                               base64.b64decode(task["message"]) if "message" in task else None,
                               KeptReply.from_json(reply_file.read_bytes()) if reply_file.is_file() else None,
                               (self.directory / REGISTERED_FILE).is_file())

    def clear(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    def _write_task(self, task: dict) -> None:
        _replace(self.directory / TASK_FILE, json.dumps(task).encode())


# ----------------------------------------------------------------------------- pushing
def push_reply(client, reply: KeptReply, on_registered=lambda: None) -> None:
    """Register ``reply`` with the SuperNode and push the objects it does not have yet (Flower's
    ``run_clientapp.push_message``, from the kept bytes)."""
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611
    from flwr.proto.runtime_pb2 import PushAppMessagesRequest  # pylint: disable=E0611
    from flwr.supercore.inflatable.inflatable_protobuf_utils import make_push_object_fn_protobuf
    from flwr.supercore.inflatable.inflatable_utils import push_object_contents_from_iterable

    res = client.PushMessages(PushAppMessagesRequest.FromString(reply.request))
    on_registered()
    missing = [(oid, reply.objects[oid]) for oid in res.objects_to_push]
    push_object_contents_from_iterable(missing, make_push_object_fn_protobuf(
        client.PushObject, Node(node_id=reply.node_id), run_id=reply.run_id, session_id=res.session_id))


def send_reply(client, flight: TaskInFlight, reply, context, status: str, details: str) -> KeptReply:
    """Keep ``reply`` (before any of it leaves), then push it."""
    kept = KeptReply.of(reply, context, status, details)
    flight.keep_reply(kept)
    push_reply(client, kept, flight.mark_registered)
    return kept


def _held_by_supernode(client, reply: KeptReply) -> tuple[bool, bool]:
    """(the SuperNode holds the reply, it holds all of its objects)."""
    from flwr.proto.message_pb2 import PullObjectRequest  # pylint: disable=E0611
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611

    def state(oid: str):
        return client.PullObject(PullObjectRequest(node=Node(node_id=reply.node_id), run_id=reply.run_id,
                                                   object_id=oid))

    root = state(reply.message_id)
    if not root.object_found:
        return False, False
    return True, all(state(oid).object_available for oid in reply.objects)


def finish_task(client, flight: TaskInFlight, left: InterruptedTask, message=None, context=None) -> str:
    """Complete a task whose worker (or runtime) died; returns what was done, for the log.
    ``message``/``context``: the task's, when this process still has them."""
    from flwr.common.constant import SubStatus
    from flwr.common.serde import message_from_proto
    from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=E0611
    from flwr.supernode.runtime.run_clientapp import push_task_output

    from clients.node_runtime import error_reply

    reply = left.reply
    if reply is None:
        if message is None:
            message = message_from_proto(ProtoMessage.FromString(left.message))
        reply = send_reply(client, flight, error_reply(message), context, SubStatus.FAILED,
                           "the fedcredit worker died before its reply")
        done = "no reply had been made: answered with the fixed error reply"
    else:
        held, complete = _held_by_supernode(client, reply)
        if held and complete:
            done = "its reply was with the SuperNode in full"
        elif not held and left.registered:
            done = "its reply had been sent by the SuperNode"
        else:
            push_reply(client, reply)
            done = "its kept reply was pushed again" + (" (the SuperNode held part of it)" if held else "")
    push_task_output(client, reply.context_after(), reply.status, reply.details)
    return done


def finish_interrupted_task(s: RuntimeSettings) -> None:
    """A restarted runtime: finish the task the previous one left in flight, if its lease lasts."""
    from clients.task_input import heartbeat_fn

    flight = TaskInFlight.of(s)
    left = flight.load()
    if left is None:
        return
    try:
        if left.message is None and left.reply is None:
            log(f"task {left.task_id}: its message had not been received when the runtime died; left to the "
                "SuperNode (the task's lease ends within 60 s)")
            return
        client = task_client(s, left.token)
        try:
            if not heartbeat_fn(client)():
                log(f"task {left.task_id}, interrupted when the runtime died: its lease had ended, the SuperNode "
                    "finished it" + (" — but it held part of this node's reply and may still wait for the rest "
                                     "(restart the node if it takes no further message)"
                                     if left.registered else ""))
                return
            done = finish_task(client, flight, left)
            log(f"task {left.task_id}, interrupted when the runtime died, is finished: {done}")
        finally:
            client.close()
    except Exception as exc:  # the runtime must start anyway; the task's lease ends at the SuperNode
        log(f"task {left.task_id}, interrupted when the runtime died, could not be finished: {exc!r}")
    finally:
        flight.clear()
