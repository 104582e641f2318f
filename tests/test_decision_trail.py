"""The decision trail and the decision desk in this process: group commit, crash repair, tampering."""

from __future__ import annotations

import json

import pytest

from clients.decision_desk import Decided, DecisionDesk, Job
from clients.decision_engine import DecisionModel, Rejected
from clients.decision_log import LOG_FILE, DecisionLog, application_sha256, read_trail
from configs.errors import UserError
from fedcredit.cli import main as cli_main
from fedcredit.signing_keys import ChainError
from tests.serving import build_package, records


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("trail")
    _, apps = build_package(d / "model")
    return DecisionModel(d / "model"), records(apps)


def _desk(model, directory, store_application=True) -> DecisionDesk:
    log = DecisionLog.open(directory)
    log.append("service-start", dict(model.settings(), store_application="full" if store_application else "hash"))
    return DecisionDesk(model, log, store_application)


def test_a_group_is_decided_with_one_sync_and_answered_only_once_durable(model, tmp_path):
    """Jobs queued together are one group: one validation, one scoring, one sync, then the answers."""
    m, apps = model
    desk = _desk(m, tmp_path)
    syncs = []
    datasync = desk.log.datasync
    bad = dict(apps[0], age="old")
    jobs = [Job("single", [a]) for a in apps[:20]] + [Job("single", [bad])]
    # at the sync: the file's size, and whether any job was answered before it
    desk.log.datasync = lambda: (syncs.append((desk.log.size, any(j.future.done() for j in jobs))), datasync())[1]
    futures = [desk.submit(j) for j in jobs]  # all queued before the worker starts: one group
    desk.start()
    answers = [f.result(timeout=120) for f in futures]
    assert desk.groups == 1 and len(syncs) == 1 and desk.syncs == 1
    assert all(isinstance(a, Decided) for a in answers[:20]) and isinstance(answers[20], Rejected)
    assert answers[20].problems[0]["field"] == "age"  # only its own problem, worded for its own row
    on_disk = (tmp_path / LOG_FILE).read_bytes()
    assert syncs[0] == (len(on_disk), False)  # the sync covered every answered entry, and came before any answer
    for a in answers[:20]:
        assert a.records[0]["trail"]["hash"].encode() in on_disk
    desk.close()
    trail = read_trail(tmp_path)
    assert trail.check.ok and trail.index.counts == {"log-start": 1, "service-start": 1, "decision": 20,
                                                     "service-stop": 1}


def test_a_torn_last_line_is_cut_saved_and_recorded_at_the_next_start(model, tmp_path):
    m, apps = model
    desk = _desk(m, tmp_path)
    desk.start()
    answered = desk.submit(Job("single", [apps[0]])).result(timeout=120).records[0]
    desk.close()
    path = tmp_path / LOG_FILE
    torn = b'{"hash":"0123","index":4,"kind":"decision","payload":{"decision_id":"unanswe'
    with open(path, "ab") as fh:
        fh.write(torn)
    check = read_trail(tmp_path).check
    assert not check.ok and check.torn_tail and check.first_bad_index == 4
    log = DecisionLog.open(tmp_path)
    log.close()
    trail = read_trail(tmp_path)
    assert trail.check.ok and trail.index.counts["recovered"] == 1
    assert trail.index.decisions[answered["decision_id"]].hash == answered["trail"]["hash"]
    [saved] = tmp_path.glob("torn-tail-*.bin")
    assert saved.read_bytes() == torn


def test_a_first_write_cut_short_starts_the_trail_again(tmp_path):
    DecisionLog.open(tmp_path).close()  # the key, then the log-start entry: cut that write short
    (tmp_path / LOG_FILE).write_bytes((tmp_path / LOG_FILE).read_bytes()[:40])
    DecisionLog.open(tmp_path).close()
    trail = read_trail(tmp_path)  # without a key: the log-start entry must come first and name it
    assert trail.check.ok and trail.check.key_from_ledger
    assert trail.index.counts == {"log-start": 1, "recovered": 1}


def test_a_modified_trail_is_not_continued_and_a_second_writer_is_refused(model, tmp_path):
    m, apps = model
    log = DecisionLog.open(tmp_path)
    with pytest.raises(ChainError, match="another process is writing this decision log"):
        DecisionLog.open(tmp_path)
    log.close()
    lines = (tmp_path / LOG_FILE).read_bytes().splitlines(keepends=True)
    entry = json.loads(lines[0])
    entry["payload"]["key"]["source"] = "given"
    lines[0] = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
    (tmp_path / LOG_FILE).write_bytes(b"".join(lines))
    with pytest.raises(ChainError, match=r"does not verify.*entry 0 \(log-start\).*do not match its hash"):
        DecisionLog.open(tmp_path)
    (tmp_path / "decisions-key.pem").unlink()
    with pytest.raises(UserError, match="--signing-key"):
        DecisionLog.open(tmp_path)


def test_hash_only_trail_reproduces_with_the_application_given(model, tmp_path, capsys):
    m, apps = model
    desk = _desk(m, tmp_path / "dec", store_application=False)
    desk.start()
    answer = desk.submit(Job("single", [apps[5]])).result(timeout=120).records[0]
    desk.close()
    entry = read_trail(tmp_path / "dec")
    payload = json.loads((tmp_path / "dec" / LOG_FILE).read_text().splitlines()[2])["payload"]
    assert "application" not in payload and payload["application_sha256"] == application_sha256(apps[5])
    assert entry.check.ok
    (tmp_path / "app.json").write_text(json.dumps(apps[5]))
    (tmp_path / "other.json").write_text(json.dumps(apps[6]))
    did = answer["decision_id"]
    assert cli_main(["decisions", "show", did, "--decisions", str(tmp_path / "dec")]) == 0
    assert "not reproduced" in capsys.readouterr().out
    assert cli_main(["decisions", "show", did, "--decisions", str(tmp_path / "dec"), "--application",
                     str(tmp_path / "app.json"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["reproduced"]["matches"] is True
    assert cli_main(["decisions", "show", did, "--decisions", str(tmp_path / "dec"), "--application",
                     str(tmp_path / "other.json")]) == 2
    assert "not the application that was decided" in capsys.readouterr().err


def test_a_changed_decision_is_reported_as_not_reproduced(model, tmp_path, capsys):
    from clients.decisions_show_command import compare

    m, apps = model
    again = m.redecide(apps[0])
    recorded = {"outputs": dict(again["outputs"]), "reasons": list(again["reasons"])}
    assert compare(recorded, again)["matches"]
    recorded["outputs"]["pd"] += 1e-3
    recorded["outputs"]["decision"] = "approve" if again["outputs"]["decision"] == "decline" else "decline"
    result = compare(recorded, again)
    assert not result["matches"] and len(result["differences"]) == 2


def test_verify_refuses_what_is_not_a_trail(tmp_path, capsys):
    (tmp_path / LOG_FILE).write_bytes(b"")
    assert cli_main(["decisions", "verify", str(tmp_path)]) == 2
    assert "empty" in capsys.readouterr().err
    assert cli_main(["decisions", "verify", str(tmp_path / "nowhere")]) == 2
    assert "no decision log there" in capsys.readouterr().err


def test_without_a_trail_decisions_are_answered_but_nothing_is_stored(model):
    import asyncio

    import httpx

    from clients.decision_http import build_app

    m, apps = model
    desk = DecisionDesk(m, None)
    app = build_app(desk)

    async def exchange() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service") as client:
            r = await client.post("/v1/decisions", json=apps[0])
            assert r.status_code == 201 and r.json()["trail"] is None
            did = r.json()["decision_id"]
            assert (await client.get(f"/v1/decisions/{did}")).status_code == 409
            r = await client.post(f"/v1/decisions/{did}/override", json={"decision": "approve", "reason": "x",
                                                                           "by": "y"})
            assert r.status_code == 409 and r.json()["error"] == "no-trail"
            assert (await client.get("/healthz")).json()["trail"] is None

    desk.start()  # what the app's lifespan does under uvicorn
    try:
        asyncio.run(exchange())
    finally:
        desk.close()
